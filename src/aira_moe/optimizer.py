"""Per-bank learning rates, so that `learning_rate` means for aira_moe what it means for LoRA.

Experts whose gradients are equal by construction receive equal Adam updates and move as one:
under `fully` every A_i gets Σ_j B_jᵀ G and every B_j gets G (Σ_i A_i)ᵀ, so Σ_i A_i moves num_A
times and Σ_j B_j num_B times as fast as one LoRA factor at the same rate (docs/method.md §1).
Each bank's rate is therefore divided by how many experts share its gradient direction: for
A_i the columns of Ω that point like column i, for B_j the rows that point like row j (a sum of
cosine similarities, so 1 for independent experts). `fully` then trains exactly as a rank-r LoRA
at the user's rate; `heuristic` as num_A independent rank-r LoRAs; `learned` starts close to
`fully` (its Ω starts with positive, nearly equal entries) and is scaled almost as much; the
factors come from Ω's start, so every layer and a resumed run share them.

An AwSVD-started adapter's rates are multiplied once more, by `awsvd_lr_ratio`: its factors are
large from step 0, so each Adam step moves ΔW more than a zero-started B does, and the measured
best rates of every AwSVD mode (and of PiSSA) sat 2-4x below LoRA's (4x for `heuristic` and `learned`
on every domain measured). All its trainable banks (Ω
included) take the ratio, so that a run at rate L trains exactly as one at L x ratio without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .logs import info_main
from .tuner.layer import AiraMoeLayer

def shared_gradient_count(vectors: torch.Tensor) -> float:
    """Mean over the rows of how many rows (itself included) point the same way: Σ of clipped cosines."""
    unit = nn.functional.normalize(vectors.detach().double(), dim=1)
    return float((unit @ unit.T).clamp(min=0).sum(1).mean())


def bank_lr_factors(layer: AiraMoeLayer, adapter_name: str) -> dict[str, float]:
    """Learning-rate factors of the layer's A bank, B bank and (learned) Ω for one adapter.

    Read from Ω as training starts, not its current value: the factors are then the same in every
    layer and in a resumed run (whose optimizer state must find the groups it was saved with).
    """
    omega = layer.start_omega(adapter_name)
    factors = {"aira_A": 1.0 / shared_gradient_count(omega.T), "aira_B": 1.0 / shared_gradient_count(omega)}
    return {**{bank: round(factor, 12) for bank, factor in factors.items()}, "aira_omega": 1.0}


def decay_parameter_names(model: nn.Module) -> set[str]:
    """The parameters transformers' Trainer gives weight decay (not biases, not norms), by its own rule."""
    from transformers import Trainer

    return set(Trainer.get_decay_parameter_names(None, model))  # the method does not use the trainer


def peft_configs(model: nn.Module) -> dict[str, Any]:
    """The adapters' configs, from the peft model wherever it sits (a value-head wrapper holds it as a submodule)."""
    return next((module.peft_config for module in model.modules() if hasattr(module, "peft_config")), {})


def start_ratio(config: Any) -> float:
    """`awsvd_lr_ratio` for an adapter initialised by AwSVD, else 1."""
    return config.awsvd_lr_ratio if getattr(config, "use_awsvd_init", False) else 1.0


def parameter_factors(model: nn.Module) -> dict[str, float]:
    """Parameter name -> learning-rate factor, for the trainable parameters of every aira_moe bank."""
    factors, configs = {}, peft_configs(model)
    for module_name, module in model.named_modules():
        if not isinstance(module, AiraMoeLayer):
            continue
        for adapter_name in module.aira_A:
            ratio = start_ratio(configs.get(adapter_name))
            for bank, factor in bank_lr_factors(module, adapter_name).items():
                factors[f"{module_name}.{bank}.{adapter_name}"] = round(factor * ratio, 12)
    return factors


def optimizer_parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Parameter groups for any torch optimizer: the trainable parameters grouped by (rate factor, weight decay).

    Parameters outside the banks (`modules_to_save`, a value head) keep `learning_rate`. For plain
    peft + transformers: `torch.optim.AdamW(optimizer_parameter_groups(model, 2e-4, 0.01))`.
    """
    factors, decays = parameter_factors(model), decay_parameter_names(model)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (factors.get(name, 1.0), weight_decay if name in decays else 0.0)
            groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": learning_rate * factor, "weight_decay": decay}
            for (factor, decay), params in groups.items()]


def trainer_optimizer(model: nn.Module, args: Any) -> torch.optim.Optimizer:
    """The optimizer transformers' Trainer would build from `args` (class, betas, eps), with per-bank rates.

    `Trainer(..., optimizers=(trainer_optimizer(model, args), None))`; LLaMA-Factory runs get it by itself.
    """
    from transformers import Trainer

    optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    used = sorted({factor for name, factor in parameter_factors(model).items() if name in trainable})
    ratios = sorted({start_ratio(config) for config in peft_configs(model).values()} - {1.0})
    start = f" (AwSVD start: awsvd_lr_ratio {', '.join(f'{ratio:g}' for ratio in ratios)} included)" if ratios else ""
    info_main(f"Per-bank learning rates (bank_lr_scaling): learning_rate x {', '.join(f'{factor:.3g}' for factor in used)}{start}.")
    return optimizer_class(optimizer_parameter_groups(model, args.learning_rate, args.weight_decay), **optimizer_kwargs)
