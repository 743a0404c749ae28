"""Static activation-aware weights (SPEC section 5), computed once from calibration statistics.

Static weights keep the adapter exactly mergeable; per-batch weights would be noisy, could zero
the weakest channel, and could not be folded into W.
"""

from __future__ import annotations

import torch
from torch import nn

from .calibration import Statistics
from .tuner import AiraMoeLayer

CLIP = (0.1, 10.0)


def activation_weights(rms: torch.Tensor, normalize: bool) -> torch.Tensor:
    """w = (rms / mean(rms))^½; with `normalize`, clipped to [0.1, 10] and rescaled to mean 1."""
    mean = rms.mean()
    weights = (rms / mean).sqrt() if mean > 0 else torch.ones_like(rms)
    if normalize:
        weights = weights.clamp(*CLIP)
        weights = weights / weights.mean()
    return weights


def apply_activation_weights(
    model: nn.Module, stats: Statistics, mode: str, normalize: bool, adapter_name: str = "default"
) -> int:
    """Set every adapted layer's weights from its statistics; returns how many layers were set."""
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, AiraMoeLayer) or adapter_name not in module.aira_A:
            continue
        layer_stats = stats[name.removeprefix("base_model.model.")]
        rms = layer_stats.rms_in if mode == "inps" else layer_stats.rms_out
        module.set_activation_weights(adapter_name, activation_weights(rms, normalize))
        count += 1
    return count
