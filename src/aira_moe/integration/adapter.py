"""Create, resume or merge `aira_moe` adapters inside LLaMA-Factory's `load_model`.

Mirrors what LLaMA-Factory does for LoRA: adapters listed in `adapter_name_or_path` are merged
into the base, except the last one when training continues on it; a new adapter is created
when training starts fresh. Loading goes through peft's own `PeftModel.from_pretrained`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from llamafactory.extras import logging
from llamafactory.model.model_utils.misc import find_all_linear_modules
from peft import PeftModel, TaskType, get_peft_model
from transformers.integrations import is_deepspeed_zero3_enabled

from ..errors import AiraMoeError
from ..techniques import initialize_aira_moe
from ..tuner import AiraMoeConfig
from . import run_data
from .arguments import option_values

if TYPE_CHECKING:
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from transformers import PreTrainedModel

logger = logging.get_logger("llamafactory.model.aira_moe")


def build_config(model: "PreTrainedModel", finetuning_args: "FinetuningArguments") -> AiraMoeConfig:
    """The peft config of a new adapter from LLaMA-Factory's arguments (`lora_target: all` resolved as LoRA's)."""
    values = option_values(finetuning_args)
    if values["target_modules"] == ["all"]:
        values["target_modules"] = find_all_linear_modules(model, finetuning_args.freeze_vision_tower)
    return AiraMoeConfig(task_type=TaskType.CAUSAL_LM, **values)


def _load_adapters(
    model: "PreTrainedModel",
    model_args: "ModelArguments",
    finetuning_args: "FinetuningArguments",
    is_trainable: bool,
) -> tuple["PreTrainedModel", bool]:
    """Merge all listed adapters but the one training resumes on; return the model and whether one was kept.

    On a quantised base the (single) adapter is never merged, as LLaMA-Factory does for LoRA: the
    weights cannot take it exactly.
    """
    paths = list(model_args.adapter_name_or_path)
    quantized = getattr(model, "quantization_method", None) is not None
    resume = (is_trainable and not finetuning_args.create_new_adapter) or quantized
    if is_deepspeed_zero3_enabled() and len(paths) > 1:
        raise AiraMoeError("DeepSpeed ZeRO-3 accepts a single aira_moe adapter; merge the others first.")
    to_merge = paths[:-1] if resume else paths
    for path in to_merge:
        model = PeftModel.from_pretrained(model, path, subfolder=model_args.adapter_folder).merge_and_unload()
    if to_merge:
        logger.info_rank0(f"Merged {len(to_merge)} aira_moe adapter(s).")
    if resume:
        model = PeftModel.from_pretrained(model, paths[-1], is_trainable=is_trainable, subfolder=model_args.adapter_folder)
    logger.info_rank0("Loaded adapter(s): {}".format(",".join(paths)))
    return model, resume


def move_to_training_device(model: "PreTrainedModel", device: torch.device) -> None:
    """Models built on the CPU (e.g. `train_from_scratch`) would calibrate and run AwSVD on the CPU,
    about a minute per batch for a 3B model; the Trainer moves them to this device anyway."""
    if device.type != "cpu" and next(model.parameters()).device.type == "cpu":
        logger.info_rank0(f"Moving the base model to {device} for calibration (the Trainer would move it there next).")
        model.to(device)


def _create_adapter(model: "PreTrainedModel", finetuning_args: "FinetuningArguments") -> "PreTrainedModel":
    """A new adapter; with a technique on, initialised on a seeded random sample of this run's training set."""
    config = build_config(model, finetuning_args)
    if not config.needs_calibration:
        return get_peft_model(model, config)
    run = run_data.current()
    if run is None or run.train_dataset is None:
        raise AiraMoeError(
            "aira_moe's activation-informed techniques need the training data, which only "
            "`llamafactory-cli train` (stages pt, sft, rm, dpo, kto) provides."
        )
    training_args = run.training_args
    move_to_training_device(model, training_args.device)
    loader, sample = run.calibration_loader(config.awsvd_collect_steps, training_args.seed)
    logger.info_rank0(sample)
    return initialize_aira_moe(
        model, config, loader, output_dir=training_args.output_dir,
        cache_fields=run.cache_fields(str(model.config.name_or_path)),
    )


def init_aira_moe_adapter(
    model: "PreTrainedModel",
    model_args: "ModelArguments",
    finetuning_args: "FinetuningArguments",
    is_trainable: bool,
) -> "PreTrainedModel":
    """LLaMA-Factory's `init_adapter` for `finetuning_type: aira_moe`."""
    resumed = False
    if model_args.adapter_name_or_path is not None:
        model, resumed = _load_adapters(model, model_args, finetuning_args, is_trainable)
    if not is_trainable:
        return model
    if not resumed:
        logger.info_rank0(
            f"Fine-tuning method: AIRA-MoE ({finetuning_args.num_A} A x {finetuning_args.num_B} B, "
            f"{finetuning_args.collaboration})"
        )
        model = _create_adapter(model, finetuning_args)
    if not (finetuning_args.pure_bf16 or is_deepspeed_zero3_enabled()):
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return model
