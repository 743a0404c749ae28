"""The activation-informed techniques inside a LLaMA-Factory run: calibrate, then allocate ranks.

Runs in `init_adapter` on the frozen base model, before adapters are injected and before the
Trainer creates its optimizer and LR schedule.
"""

from __future__ import annotations

import time
from pathlib import Path

from llamafactory.extras import logging
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from ..calibration import (
    CACHE_FILE,
    Statistics,
    cache_key,
    collect_statistics,
    is_main_process,
    load_statistics,
    save_statistics,
)
from ..rank_allocation import allocate_ranks, block_of, lod_theta, write_allocation
from ..tuner import AiraMoeConfig
from . import run_context

logger = logging.get_logger("llamafactory.model.aira_moe")


def needs_calibration(finetuning_args) -> bool:
    return finetuning_args.use_layer_wise_rank or finetuning_args.use_activation_aware or finetuning_args.use_awsvd_init


def target_linear_modules(model: nn.Module, config: AiraMoeConfig) -> dict[str, nn.Linear]:
    """The base model's linear layers the adapter config will adapt, by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and check_target_module_exists(config, name)
    }


def move_to_training_device(model: nn.Module, device) -> None:
    """Models built on the CPU (e.g. `train_from_scratch`) would calibrate and run AwSVD on the CPU,
    about a minute per batch for a 3B model; the Trainer moves them to this device anyway."""
    parameter = next(model.parameters())
    if device.type != "cpu" and parameter.device.type == "cpu":
        logger.info_rank0(f"Moving the base model to {device} for calibration (the Trainer would move it there next).")
        model.to(device)


def calibrate(model: nn.Module, modules: dict[str, nn.Linear], finetuning_args) -> Statistics:
    """Statistics of the run's first `awsvd_collect_steps` training batches, cached in output_dir."""
    context = run_context.current()
    if context is None:
        raise RuntimeError(
            "aira_moe's activation-informed techniques need the training data, which only "
            "`llamafactory-cli train` (stage pt or sft) provides."
        )
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "DeepSpeed ZeRO-3 partitions the weights that calibration reads; use ZeRO-2 (or no DeepSpeed) "
            "with use_layer_wise_rank / use_activation_aware / use_awsvd_init."
        )
    move_to_training_device(model, context.training_args.device)
    loader = context.train_loader()
    steps = finetuning_args.awsvd_collect_steps
    if len(loader) < steps:
        logger.warning_rank0(
            f"awsvd_collect_steps={steps}, but the training set has only {len(loader)} batches of "
            f"{loader.batch_size}: calibrating on all {len(loader)}."
        )
        steps = len(loader)
    data_args, training_args = context.data_args, context.training_args
    key = cache_key(
        model=context.model_args.model_name_or_path,
        dataset=data_args.dataset,
        dataset_dir=data_args.dataset_dir,
        template=data_args.template,
        cutoff_len=data_args.cutoff_len,
        max_samples=data_args.max_samples,
        batch_size=loader.batch_size,
        steps=steps,
        seed=training_args.seed,
        targets=sorted(modules),
    )
    path = Path(training_args.output_dir) / CACHE_FILE
    cached = load_statistics(path, key)
    if cached is not None:
        logger.info_rank0(f"Reusing calibration statistics from {path}.")
        return cached
    started = time.time()
    stats = collect_statistics(model, modules, loader, steps)
    tokens = next(iter(stats.values())).tokens
    logger.info_rank0(
        f"Calibration: {steps} batches, {tokens} tokens, {len(modules)} layers in {time.time() - started:.1f} s."
    )
    if is_main_process():
        save_statistics(path, key, stats)
    return stats


def layer_wise_rank_pattern(
    modules: dict[str, nn.Linear], stats: Statistics, finetuning_args, output_dir: Path
) -> dict[str, int]:
    """Per-module ranks (one per decoder block) from θ and the budget; writes the allocation and its plot."""
    blocks = sorted({block_of(name) for name in modules})
    if finetuning_args.theta_type == "lod":
        theta_by_block = lod_theta(
            {name: module.weight for name, module in modules.items()},
            {name: stats[name].input_norm for name in modules},
            finetuning_args.lod_threshold_M,
        )
    else:
        theta_by_block = dict.fromkeys(blocks, 1.0)
    theta = [theta_by_block[block] for block in blocks]
    ranks = allocate_ranks(theta, finetuning_args.rank_budget, finetuning_args.min_rank, finetuning_args.max_rank)
    logger.info_rank0(f"Layer-wise ranks (budget {finetuning_args.rank_budget}): {ranks}")
    if is_main_process():
        write_allocation(output_dir, theta, ranks, finetuning_args.theta_type)
    rank_of_block = dict(zip(blocks, ranks))
    return {name: rank_of_block[block_of(name)] for name in modules}
