"""Create, resume or merge `aira_moe` adapters inside LLaMA-Factory's `load_model`.

Mirrors what LLaMA-Factory does for LoRA: adapters listed in `adapter_name_or_path` are merged
into the base, except the last one when training continues on it; a new adapter is created
when training starts fresh. Loading goes through peft's own `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from llamafactory.extras import logging
from llamafactory.model.model_utils.misc import find_all_linear_modules
from peft import PeftModel, TaskType, get_peft_model
from transformers.integrations import is_deepspeed_zero3_enabled

from ..activation_aware import apply_activation_weights
from ..awsvd import apply_awsvd_init
from ..tuner import AiraMoeConfig
from . import run_context
from .techniques import calibrate, layer_wise_rank_pattern, needs_calibration, target_linear_modules

if TYPE_CHECKING:
    from llamafactory.hparams import FinetuningArguments, ModelArguments
    from transformers import PreTrainedModel

logger = logging.get_logger("llamafactory.model.aira_moe")


def build_config(model: "PreTrainedModel", finetuning_args: "FinetuningArguments") -> AiraMoeConfig:
    """The peft config of a new adapter from LLaMA-Factory's arguments."""
    targets = finetuning_args.lora_target
    if len(targets) == 1 and targets[0] == "all":
        targets = find_all_linear_modules(model, finetuning_args.freeze_vision_tower)
    return AiraMoeConfig(
        task_type=TaskType.CAUSAL_LM,
        r=finetuning_args.lora_rank,
        lora_alpha=finetuning_args.lora_alpha,
        lora_dropout=finetuning_args.lora_dropout,
        use_rslora=finetuning_args.use_rslora,
        num_A=finetuning_args.num_A,
        num_B=finetuning_args.num_B,
        collaboration=finetuning_args.collaboration,
        use_activation_aware=finetuning_args.use_activation_aware,
        use_awsvd_init=finetuning_args.use_awsvd_init,
        activation_aware_mode=finetuning_args.activation_aware_mode,
        adapter_compute_dtype=finetuning_args.adapter_compute_dtype,
        target_modules=targets,
        modules_to_save=finetuning_args.additional_target,
    )


def _load_adapters(
    model: "PreTrainedModel",
    model_args: "ModelArguments",
    finetuning_args: "FinetuningArguments",
    is_trainable: bool,
) -> tuple["PreTrainedModel", bool]:
    """Merge all listed adapters but the one training resumes on; return the model and whether one was kept."""
    paths = list(model_args.adapter_name_or_path)
    resume = is_trainable and not finetuning_args.create_new_adapter
    if is_deepspeed_zero3_enabled() and len(paths) > 1:
        raise ValueError("DeepSpeed ZeRO-3 accepts a single aira_moe adapter; merge the others first.")
    to_merge = paths[:-1] if resume else paths
    for path in to_merge:
        model = PeftModel.from_pretrained(model, path, subfolder=model_args.adapter_folder).merge_and_unload()
    if to_merge:
        logger.info_rank0(f"Merged {len(to_merge)} aira_moe adapter(s).")
    if resume:
        model = PeftModel.from_pretrained(model, paths[-1], is_trainable=True, subfolder=model_args.adapter_folder)
    logger.info_rank0("Loaded adapter(s): {}".format(",".join(paths)))
    return model, resume


def _create_adapter(model: "PreTrainedModel", finetuning_args: "FinetuningArguments") -> "PreTrainedModel":
    """Calibrate the frozen base if a technique needs it, allocate ranks, inject, set activation weights."""
    config = build_config(model, finetuning_args)
    if not needs_calibration(finetuning_args):
        return get_peft_model(model, config)
    modules = target_linear_modules(model, config)
    stats = calibrate(model, modules, finetuning_args)
    if finetuning_args.use_layer_wise_rank:
        output_dir = Path(run_context.current().training_args.output_dir)
        config.rank_pattern = layer_wise_rank_pattern(modules, stats, finetuning_args, output_dir)
    model = get_peft_model(model, config)
    if finetuning_args.use_activation_aware:
        apply_activation_weights(
            model, stats, finetuning_args.activation_aware_mode, finetuning_args.activation_normalize
        )
    if finetuning_args.use_awsvd_init:
        started = time.time()
        count = apply_awsvd_init(model, stats)
        logger.info_rank0(f"AwSVD initialised {count} layers in {time.time() - started:.1f} s.")
    return model


def init_aira_moe_adapter(
    model: "PreTrainedModel",
    model_args: "ModelArguments",
    finetuning_args: "FinetuningArguments",
    is_trainable: bool,
) -> "PreTrainedModel":
    """LLaMA-Factory's `init_adapter` for `finetuning_type: aira_moe`."""
    if getattr(model, "quantization_method", None) is not None:
        raise ValueError("aira_moe does not support quantised base models yet; drop `quantization_bit`.")
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
