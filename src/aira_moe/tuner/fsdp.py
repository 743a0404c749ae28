"""FSDP wrapping for aira_moe layers, added to the policy the Trainer takes from peft.

FSDP flattens the parameters of each wrapped unit into one tensor, so a unit must hold one dtype. Trainers
keep adapter weights in fp32 over a bf16 base (LLaMA-Factory upcasts every trainable parameter), and a
decoder-layer unit holding both fails with "Must flatten tensors with uniform dtype". peft avoids it for
LoRA by making every leaf module with a trainable `weight` its own unit. Our banks are parameters of the
`AiraMoeLayer` itself (peft's small-tuner layout), which that rule misses; and FSDP gathers a unit's
parameters only around that unit's own forward, so the unit must be a module whose forward reads them.
Hence every `AiraMoeLayer` is its own unit, holding only the adapter's parameters, and its base layer a
unit inside it, holding the frozen weight; the decoder layer keeps the frozen rest.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

from torch import nn

from .layer import AiraMoeLayer
from .peft_type import require_peft


def aira_moe_wrap_policy(model: nn.Module) -> Optional[Callable]:
    """An FSDP auto-wrap policy making each aira_moe layer and its base layer units; None without such layers."""
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy  # here: builds without torch.distributed import us

    layers = [layer for layer in model.modules() if isinstance(layer, AiraMoeLayer)]
    units = {id(module) for layer in layers for module in (layer, layer.base_layer)}
    if not units:
        return None
    return functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda module: id(module) in units)


def _with_aira_moe_layers(original: Callable) -> Callable:
    def fsdp_auto_wrap_policy(model: nn.Module) -> Callable:
        from torch.distributed.fsdp.wrap import _or_policy

        ours = aira_moe_wrap_policy(model)
        default = original(model)
        return default if ours is None else functools.partial(_or_policy, policies=[ours, default])

    fsdp_auto_wrap_policy.__aira_moe_patched__ = True
    return functools.wraps(original)(fsdp_auto_wrap_policy)


def extend_peft_fsdp_policy() -> None:
    """Make peft's `fsdp_auto_wrap_policy` (which the HF Trainer applies under FSDP) wrap aira_moe layers too."""
    from peft.utils import other

    require_peft(hasattr(other, "fsdp_auto_wrap_policy"), "peft.utils.other.fsdp_auto_wrap_policy is missing")
    if not getattr(other.fsdp_auto_wrap_policy, "__aira_moe_patched__", False):
        other.fsdp_auto_wrap_policy = _with_aira_moe_layers(other.fsdp_auto_wrap_policy)
