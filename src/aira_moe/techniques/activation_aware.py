"""Static activation-aware weights (docs/method.md §5), computed once from calibration statistics.

Static weights keep the adapter exactly mergeable; per-batch weights would be noisy, could zero
the weakest channel, and could not be folded into W.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..tuner import AiraMoeLayer
from .calibration import Statistics

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
    layers: Mapping[str, AiraMoeLayer], stats: Statistics, mode: str, normalize: bool, adapter_name: str = "default"
) -> None:
    """Set every layer's weights from its statistics (`inps`: from rms_in, `outps`: from rms_out)."""
    for name, layer in layers.items():
        rms = stats[name].rms_in if mode == "inps" else stats[name].rms_out
        layer.set_activation_weights(adapter_name, activation_weights(rms, normalize))
