"""AIRA-MoE full mode with plain peft and transformers (no LLaMA-Factory): initialise, train, save.

    python examples/peft_trainer.py --model PATH --data train.json --output out/ [--steps 20]

`--data` is an alpaca-style JSON list (`instruction`, `input`, `output`), e.g. the files
`aira-moe prepare-data` writes. The adapter is initialised by `initialize_aira_moe` on a shuffled,
seeded loader of the same rows the Trainer trains on, then trained by `transformers.Trainer` with per-bank learning rates;
`PeftModel.from_pretrained(base, out)` loads the result (the package must be installed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from aira_moe import AiraMoeConfig, initialize_aira_moe
from aira_moe.optimizer import trainer_optimizer


def tokenized_rows(tokenizer, path: Path, cutoff: int) -> list[dict]:
    """Prompt and answer as one sequence per row (a causal-LM objective over the whole text)."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    texts = [f"{row['instruction']}\n{row.get('input', '')}\n{row['output']}{tokenizer.eos_token or ''}" for row in rows]
    return [tokenizer(text, truncation=True, max_length=cutoff) for text in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A causal LM (path or hub id).")
    parser.add_argument("--data", type=Path, required=True, help="Alpaca-style JSON list of training rows.")
    parser.add_argument("--output", type=Path, required=True, help="Where the adapter is saved.")
    parser.add_argument("--steps", type=int, default=20, help="Training steps.")
    parser.add_argument("--calibration-batches", type=int, default=8, help="Batches calibration reads.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    rows = tokenized_rows(tokenizer, args.data, cutoff=256)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    calibration = DataLoader(rows, batch_size=args.batch_size, shuffle=True, collate_fn=collator,
                             generator=torch.Generator().manual_seed(args.seed))
    config = AiraMoeConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, num_A=2, num_B=4, collaboration="heuristic",
        target_modules="all-linear", use_activation_aware=True, use_layer_wise_rank=True,
        rank_budget=4 * model.config.num_hidden_layers, min_rank=2, max_rank=8, use_awsvd_init=True,
        awsvd_collect_steps=args.calibration_batches,
    )
    model = initialize_aira_moe(model, config, calibration, output_dir=args.output)
    model.print_trainable_parameters()
    training = TrainingArguments(
        output_dir=str(args.output), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=5e-4, logging_steps=5, save_strategy="no", report_to="none", seed=args.seed,
        label_names=["labels"], use_cpu=not torch.cuda.is_available(),
    )
    # per-bank learning rates (bank_lr_scaling), as LLaMA-Factory runs get them
    optimizers = (trainer_optimizer(model, training), None)
    Trainer(model=model, args=training, train_dataset=rows, data_collator=collator, optimizers=optimizers).train()
    model.save_pretrained(args.output)
    print(f"saved the adapter to {args.output}")


if __name__ == "__main__":
    main()
