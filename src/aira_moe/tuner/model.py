"""`AiraMoeModel`: the peft tuner that swaps target linear layers for AIRA-MoE layers."""

from __future__ import annotations

import torch.nn as nn
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import get_pattern_key

from .config import AiraMoeConfig
from .layer import AiraMoeLayer, Linear


def layer_kwargs(config: AiraMoeConfig, key: str) -> dict:
    """`update_layer`'s arguments for the module at `key` (its rank from `rank_pattern`, else `r`)."""
    rank_key = get_pattern_key(config.rank_pattern.keys(), key)
    return {
        "r": config.rank_pattern.get(rank_key, config.r),
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "num_A": config.num_A,
        "num_B": config.num_B,
        "collaboration": config.collaboration,
        "use_rslora": config.use_rslora,
        "init_weights": config.init_weights,
        "inference_mode": config.inference_mode,
        "activation_aware_mode": config.activation_aware_mode if config.use_activation_aware else None,
        "awsvd_residual": config.use_awsvd_init,
        "compute_dtype": config.adapter_compute_dtype,
    }


class AiraMoeModel(BaseTuner):
    """Creates AIRA-MoE adapters on a transformers model (see `AiraMoeConfig`).

    Targets default to LoRA's per-architecture defaults, so a config without `target_modules`
    adapts the same layers LoRA would.
    """

    prefix: str = "aira_"
    tuner_layer_cls = AiraMoeLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self,
        config: AiraMoeConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        kwargs = layer_kwargs(config, current_key)
        if isinstance(target, AiraMoeLayer):
            target.update_layer(adapter_name, **kwargs)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"aira_moe can only adapt torch.nn.Linear layers; {current_key!r} is a {type(base).__name__}. "
                "Remove it from `lora_target` / `target_modules`."
            )
        new_module = Linear(target, adapter_name, **kwargs)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)
