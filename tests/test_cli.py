"""`finetuning_type: aira_moe` through the stock `llamafactory-cli`: train, resume, export, chat, torchrun.

The CLI processes import nothing of ours themselves: the start-up hook must do it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli, run_python

pytestmark = pytest.mark.slow

MAX_STEPS = 6


def write_train_yaml(path: Path, model_dir: Path, data_dir: Path, output_dir: Path, **overrides) -> Path:
    config = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "aira_moe",
        "lora_target": "all",
        "lora_rank": 4,
        "num_A": 2,
        "num_B": 3,
        "collaboration": "learned",
        "dataset": "medmcqa_train",
        "dataset_dir": str(data_dir),
        "template": "chatml",
        "cutoff_len": 256,
        "max_samples": 32,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "max_steps": MAX_STEPS,
        "save_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "report_to": "none",
        "seed": 7,
    }
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, medmcqa_dir):
    """One training run from a YAML file, shared by the tests below."""
    work = tmp_path_factory.mktemp("cli")
    config = write_train_yaml(work / "train.yaml", tiny_model_dir, medmcqa_dir, work / "out")
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=work)
    return work, log


def trainer_losses(output_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return {row["current_steps"]: row["loss"] for row in rows if "loss" in row}


def test_train_from_yaml(trained):
    work, log = trained
    out = work / "out"
    assert "Fine-tuning method: AIRA-MoE (2 A x 3 B, learned)" in log
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "AIRA_MOE"
    assert {"checkpoint-3", "checkpoint-6"} <= {p.name for p in out.iterdir()}
    assert len(trainer_losses(out)) == MAX_STEPS


def test_resume_continues_from_last_checkpoint(trained, tiny_model_dir, medmcqa_dir):
    work, _ = trained
    resumed = work / "resumed"
    shutil.copytree(work / "out" / "checkpoint-3", resumed / "checkpoint-3")
    config = write_train_yaml(work / "resume.yaml", tiny_model_dir, medmcqa_dir, resumed)
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=work)
    assert "Resuming training from" in log and "checkpoint-3" in log
    assert sorted(trainer_losses(resumed)) == [4, 5, 6]
    full_run = trainer_losses(work / "out")
    for step, loss in trainer_losses(resumed).items():
        assert loss == pytest.approx(full_run[step], rel=1e-3)


def export_and_compare(model_dir: Path, adapter_dir: Path, work: Path) -> tuple[str, dict]:
    """`llamafactory-cli export`, then the adapter (via peft) against the merged model (plain transformers,
    in a process that cannot see this package); returns the export log and the measurements."""
    config = {
        "model_name_or_path": str(model_dir),
        "adapter_name_or_path": str(adapter_dir),
        "finetuning_type": "aira_moe",
        "template": "chatml",
        "export_dir": str(work / "merged"),
    }
    (work / "export.yaml").write_text(yaml.safe_dump(config))
    log = run_cli(["llamafactory-cli", "export", str(work / "export.yaml")], cwd=work)
    torch.save(torch.randint(0, 1000, (2, 11), generator=torch.Generator().manual_seed(0)), work / "tokens.pt")
    run_python(f"""
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
tokens = torch.load({str(work / 'tokens.pt')!r})
base = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, dtype=torch.float32).eval()
base_logits = base(tokens).logits
adapter = PeftModel.from_pretrained(base, {str(adapter_dir)!r}).eval()
ranks = sorted({{m.r["default"] for m in adapter.modules() if hasattr(m, "aira_A")}})
torch.save(dict(base=base_logits, adapter=adapter(tokens).logits, ranks=ranks), {str(work / 'adapter.pt')!r})
""")
    run_python(f"""
import torch
from transformers import AutoModelForCausalLM
merged = AutoModelForCausalLM.from_pretrained({str(work / 'merged')!r}, dtype=torch.float32).eval()
assert not any('aira' in name for name, _ in merged.named_parameters())
torch.save(merged(torch.load({str(work / 'tokens.pt')!r})).logits, {str(work / 'merged.pt')!r})
""", env={"AIRA_MOE_DISABLE_HOOK": "1"})
    measured = torch.load(work / "adapter.pt")
    merged_logits = torch.load(work / "merged.pt")
    return log, {
        "merge_error": (merged_logits - measured["adapter"]).abs().max().item(),
        "training_effect": (measured["adapter"] - measured["base"]).abs().max().item(),
        "ranks": measured["ranks"],
    }


def chat_once(model_dir: Path, adapter_dir: Path) -> None:
    """LLaMA-Factory's ChatModel (what `llamafactory-cli chat` uses) answers with the merged adapter."""
    code = f"""
from llamafactory.chat import ChatModel
chat = ChatModel(dict(model_name_or_path={str(model_dir)!r}, adapter_name_or_path={str(adapter_dir)!r},
                      finetuning_type="aira_moe", template="chatml", infer_backend="huggingface",
                      do_sample=False, max_new_tokens=6))
responses = chat.chat([{{"role": "user", "content": "Which vitamin comes only from animal sources?"}}])
print("RESPONSE", repr(responses[0].response_text), responses[0].response_length)
"""
    output = run_python(code)
    assert "Merged 1 aira_moe adapter(s)" in output
    response = re.search(r"^RESPONSE (.*) (\d+)$", output, re.MULTILINE)
    assert response and int(response.group(2)) >= 1


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_model_dir, medmcqa_dir):
    """A full-mode run: calibration, layer-wise ranks, activation weights and AwSVD through the CLI."""
    work = tmp_path_factory.mktemp("calibrated")
    config = write_train_yaml(
        work / "train.yaml", tiny_model_dir, medmcqa_dir, work / "out", max_steps=4, save_steps=2,
        use_activation_aware=True, activation_aware_mode="outps",
        use_layer_wise_rank=True, rank_budget=10, min_rank=2, max_rank=8, awsvd_collect_steps=3,
        use_awsvd_init=True,
    )
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=work)
    return work, config, log


def test_full_mode_run(calibrated):
    work, _, log = calibrated
    out = work / "out"
    assert "Calibration: 3 batches" in log and "aira_moe calibration" in log
    assert "AwSVD initialised 14 layers" in log
    assert "(AwSVD start: awsvd_lr_ratio 0.25 included)" in log  # the optimizer's groups carry the ratio
    allocation = json.loads((out / "rank_allocation.json").read_text())
    assert sum(allocation["ranks"]) == 10 and all(2 <= r <= 8 for r in allocation["ranks"])
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert len(adapter_config["rank_pattern"]) == 14 and adapter_config["use_activation_aware"]
    assert sorted(set(adapter_config["rank_pattern"].values())) == sorted(set(allocation["ranks"]))
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    assert sum(key.endswith("aira_w_out") for key in weights) == 14
    assert sum(key.endswith("aira_res_left") for key in weights) == 14
    assert (out / "rank_allocation.png").is_file() and (out / "aira_moe_calibration.pt").is_file()


def test_resume_reuses_the_cached_calibration(calibrated):
    """Resuming rebuilds the same W - P0 (checkpoint residual applied once): the losses continue unchanged."""
    work, config, _ = calibrated
    original = trainer_losses(work / "out")
    shutil.rmtree(work / "out" / "checkpoint-4")
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=work)
    assert "Resuming training from" in log and "Reusing calibration statistics" in log
    assert "aira_moe calibration" not in log
    resumed = [float(loss) for loss in re.findall(r"'loss': '([0-9.]+)'", log)]
    assert resumed == pytest.approx([original[3], original[4]], rel=1e-3)


def test_chat_loads_a_full_mode_adapter(calibrated, tiny_model_dir):
    chat_once(tiny_model_dir, calibrated[0] / "out")


def test_full_mode_adapter_reloads_and_exports_into_a_plain_model_without_calibration(calibrated, tiny_model_dir):
    work, _, _ = calibrated
    log, measured = export_and_compare(tiny_model_dir, work / "out", work)
    assert "calibration" not in log.lower()
    allocation = json.loads((work / "out" / "rank_allocation.json").read_text())
    assert measured["ranks"] == sorted(set(allocation["ranks"]))
    assert measured["training_effect"] > 1e-3  # the adapter really changed the model
    assert measured["merge_error"] < 2e-3
