"""Checks of an `aira_moe` run that need more than the arguments, made while they are parsed.

They read small files only (the model's `config.json`, each adapter's `adapter_config.json`) and
build the model on the meta device for its layer shapes, so a bad value stops the run before any
weight is loaded and before calibration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import AiraMoeError
from ..tuner.peft_type import PEFT_TYPE, saved_adapter_config, saved_peft_type
from .arguments import argument_name, option_values

REFUSED_MODEL_OPTIONS = ("use_unsloth", "use_kt")
# on-the-fly quantisation methods whose layers stay torch.nn.Linear (bitsandbytes' Linear4bit / Linear8bitLt)
QUANTIZATION_METHODS = ("bnb",)
# transformers releases whose FlashAttention-2 path calls `s_aux.to` on None (transformers issue 45588)
FA2_BROKEN_TRANSFORMERS = ("5.6.0",)


def check_attention(model_args: Any) -> None:
    """`flash_attn: fa2` crashes at the first forward under the pinned transformers: say so before loading."""
    import transformers

    if str(getattr(model_args, "flash_attn", "")) == "fa2" and transformers.__version__ in FA2_BROKEN_TRANSFORMERS:
        raise AiraMoeError(
            f"`flash_attn: fa2` crashes under transformers {transformers.__version__} (its FlashAttention-2 path "
            "calls `s_aux.to` on None, transformers issue 45588); use `flash_attn: sdpa`, or install "
            "transformers 5.5.4, which LLaMA-Factory 0.9.5 also accepts."
        )


def check_quantization(model_args: Any, finetuning_args: Any) -> None:
    """What LLaMA-Factory refuses for quantised LoRA, and the methods whose layers aira_moe cannot wrap."""
    if model_args.quantization_bit is None:
        return
    method = str(getattr(model_args.quantization_method, "value", model_args.quantization_method))
    if method not in QUANTIZATION_METHODS:
        raise AiraMoeError(
            f"`quantization_method: {method}` replaces the linear layers aira_moe adapts and that AwSVD must read; "
            f"allowed with finetuning_type aira_moe: {', '.join(QUANTIZATION_METHODS)} (quantization_bit 4 or 8)."
        )
    if model_args.resize_vocab:
        raise AiraMoeError("`resize_vocab: true` cannot be combined with `quantization_bit` (quantised embeddings).")
    if model_args.adapter_name_or_path and finetuning_args.create_new_adapter:
        raise AiraMoeError(
            "`create_new_adapter: true` cannot be combined with `quantization_bit`: the adapters below it would have to be "
            "merged into quantised weights; merge them on the unquantised base first."
        )
    if model_args.adapter_name_or_path and len(model_args.adapter_name_or_path) > 1:
        raise AiraMoeError(
            "`adapter_name_or_path` lists several adapters, but a quantised base takes one (merging into quantised weights "
            "is not exact); merge them on the unquantised base first."
        )


def check_liger(model_args: Any, finetuning_args: Any) -> None:
    """Liger's fused cross-entropy reads `lm_head.weight` directly: an adapter there would be trained on nothing."""
    targets = option_values(finetuning_args)["target_modules"]  # `all` leaves lm_head out, as for LoRA
    targets = [targets] if isinstance(targets, str) else list(targets)
    if getattr(model_args, "enable_liger_kernel", False) and any("lm_head" in target for target in targets):
        raise AiraMoeError(
            "`enable_liger_kernel: true` cannot be combined with an adapter on lm_head (`lora_target`): Liger's fused "
            "cross-entropy reads lm_head.weight directly and would bypass it; drop lm_head from lora_target or Liger."
        )


def deepspeed_config(value: Any) -> dict:
    """The DeepSpeed config a run names (the `deepspeed` training argument: a JSON file or a dict); {} for none."""
    if not value:
        return {}
    if isinstance(value, dict):
        return value
    try:
        return json.loads(Path(value).read_text())
    except (OSError, ValueError) as error:
        raise AiraMoeError(f"`deepspeed: {value}` cannot be read as a DeepSpeed JSON config ({error}).") from None


def check_deepspeed(value: Any, model_args: Any) -> None:
    """What ZeRO-3 still cannot do with aira_moe (the techniques gather what they read, docs/method.md §2)."""
    zero = deepspeed_config(value).get("zero_optimization", {})
    if zero.get("stage") != 3:
        return
    where = f"`deepspeed: {value}` (ZeRO-3)" if isinstance(value, str) else "`deepspeed` (ZeRO-3)"
    if model_args.quantization_bit is not None:
        raise AiraMoeError(
            f"{where} cannot be combined with `quantization_bit` for finetuning_type aira_moe: ZeRO-3 would partition "
            "bitsandbytes' packed weights, which calibration, AwSVD and the quantised residual read; with a quantised "
            "base use ZeRO-2 (examples/deepspeed/ds_z2_config.json) or no DeepSpeed."
        )
    if zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise AiraMoeError(
            f"{where} needs `zero_optimization.stage3_gather_16bit_weights_on_model_save: true` (it is "
            f"{zero.get('stage3_gather_16bit_weights_on_model_save')!r}): without it the Trainer saves the adapter "
            "without its weights; examples/deepspeed/ds_z3_config.json sets it."
        )


def check_fsdp() -> None:
    """FSDP in one process: torch's FSDP then runs unsharded (NO_SHARD) and, with the frozen base, leaves the root
    module's weights out of the full state dict the Trainer saves at the end (stock LoRA fails the same way), or
    fails at the second step on tied embeddings; refused before hours of training are lost."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    raise AiraMoeError(
        "FSDP (`accelerate launch` with distributed_type FSDP) with 1 process cannot save an aira_moe run: torch's "
        "FSDP runs unsharded in one process and drops the frozen root weights from the saved state. Launch it with "
        "--num_processes 2 or more, or train on one GPU without FSDP."
    )


def check_before_loading(model_args: Any, data_args: Any, finetuning_args: Any) -> None:
    """Everything that can be refused before the model loads; each message names the field and what is allowed."""
    for name in REFUSED_MODEL_OPTIONS:
        value = getattr(model_args, name, None)
        if value not in (None, False):
            raise AiraMoeError(
                f"`{name}: {value!r}` is not supported with finetuning_type aira_moe "
                f"(Unsloth and KTransformers are LoRA-only for now); remove it."
            )
    check_quantization(model_args, finetuning_args)
    check_attention(model_args)
    check_liger(model_args, finetuning_args)
    for path in model_args.adapter_name_or_path or []:
        check_adapter(Path(path), model_args.adapter_folder)
    techniques = [name for name in ("use_layer_wise_rank", "use_activation_aware", "use_awsvd_init")
                  if getattr(finetuning_args, name)]
    if techniques and getattr(data_args, "streaming", False):
        raise AiraMoeError(
            f"`streaming: true` cannot be combined with {', '.join(techniques)}: calibration samples the training set "
            "at random, which needs a map-style dataset; turn streaming off or use basic mode."
        )
    if finetuning_args.use_layer_wise_rank or finetuning_args.use_awsvd_init:
        check_model_shapes(model_args, finetuning_args)


def check_adapter(path: Path, subfolder: Optional[str]) -> None:
    """A local adapter must be an AIRA-MoE adapter with a readable config (hub ids are checked by peft later)."""
    folder = path / subfolder if subfolder else path
    if not folder.is_dir():
        return
    peft_type = saved_peft_type(folder, "`adapter_name_or_path`")
    if peft_type != PEFT_TYPE:
        raise AiraMoeError(
            f"`adapter_name_or_path`: {folder} holds a {peft_type} adapter, but finetuning_type aira_moe loads "
            f"{PEFT_TYPE} adapters only; use finetuning_type: {str(peft_type).lower()} for it, or start a new adapter."
        )


def check_model_shapes(model_args: Any, finetuning_args: Any) -> None:
    """Refuse an infeasible rank budget (from `config.json`) and AwSVD ranks the layers cannot hold."""
    from transformers import AutoConfig

    from ..techniques.awsvd import awsvd_rank_problem
    from ..techniques.rank_allocation import check_budget
    from ..tuner.config import AiraMoeConfig

    model_config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    text_config = getattr(model_config, "text_config", None) or model_config
    if finetuning_args.use_layer_wise_rank:
        check_budget(text_config.num_hidden_layers, finetuning_args.rank_budget, finetuning_args.min_rank,
                     finetuning_args.max_rank)
    values = option_values(finetuning_args)
    shapes = target_shapes(model_config, values["target_modules"], finetuning_args.freeze_vision_tower,
                           model_args.trust_remote_code)
    problem = awsvd_rank_problem(shapes, AiraMoeConfig(**{**values, "target_modules": None}), label=argument_name)
    if problem is not None:
        raise AiraMoeError(problem)


def target_shapes(
    model_config: Any, targets: list[str], freeze_vision_tower: bool, trust_remote_code: bool = False
) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of every targeted linear layer, from the model built on the meta device (no weights).

    An architecture transformers cannot build this way gives no shapes; AwSVD then checks each layer itself.
    """
    import torch
    from llamafactory.model.model_utils.misc import find_all_linear_modules
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoModelForCausalLM

    from ..tuner.config import AiraMoeConfig

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - only an early check: the run-time check still holds
        return {}
    if targets == ["all"]:
        targets = find_all_linear_modules(model, freeze_vision_tower)
    matcher = AiraMoeConfig(target_modules=targets)
    return {
        name: (module.out_features, module.in_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and check_target_module_exists(matcher, name)
    }


# the rate settings a checkpoint's optimizer state was made with: what checkpoints from before each option had
RATE_SETTINGS_BEFORE = {"bank_lr_scaling": False, "awsvd_lr_ratio": 1.0}


def check_resume(checkpoint: Optional[str], finetuning_args: Any) -> None:
    """Resuming needs the checkpoint's per-bank rates: its optimizer state holds one entry per parameter group, and
    a changed factor would move every later step silently. `awsvd_lr_ratio` counts only for an AwSVD start."""
    if not checkpoint or not (Path(checkpoint) / "adapter_config.json").is_file():
        return
    saved_config = saved_adapter_config(Path(checkpoint), "`resume_from_checkpoint`")
    names = ["bank_lr_scaling"]
    if saved_config.get("use_awsvd_init") and finetuning_args.bank_lr_scaling:
        names.append("awsvd_lr_ratio")  # it scales the per-bank rates of an AwSVD start only
    for name in names:
        saved, current = saved_config.get(name, RATE_SETTINGS_BEFORE[name]), getattr(finetuning_args, name)
        if saved != current:
            setting = yaml_value(saved)
            raise AiraMoeError(
                f"`{name}: {yaml_value(current)}` cannot resume {checkpoint}, which was trained with {name}: {setting}; "
                f"set `{name}: {setting}` to resume it, or train into a new output_dir."
            )


def yaml_value(value: Any) -> str:
    """A setting as a YAML file spells it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
