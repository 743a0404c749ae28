"""The data-driven initialisation of an AIRA-MoE adapter, usable with plain peft and transformers.

`initialize_aira_moe` is to AIRA-MoE what peft's `initialize_lora_eva_weights` is to LoRA: it
takes a model, a config and a dataloader, runs the three activation-informed techniques the
config switches on, and returns the initialised peft model. The LLaMA-Factory integration calls
it with a seeded random sample of the run's training set.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from ..errors import AiraMoeError
from ..logs import warning_main
from ..tuner import AiraMoeConfig, AiraMoeLayer
from ..tuner.model import layer_kwargs
from ..tuner.peft_type import PEFT_TYPE
from .activation_aware import apply_activation_weights
from .awsvd import apply_awsvd_init, awsvd_rank_problem
from .calibration import (
    CACHE_FILE,
    Batch,
    cached_statistics,
    collect_statistics,
    fingerprint_batches,
    fingerprint_weights,
)
from .rank_allocation import layer_wise_rank_pattern

__all__ = ["CACHE_FILE", "initialize_aira_moe"]
PEFT_PREFIX = "base_model.model."


def adapted_layers(model: PeftModel, adapter_name: str) -> dict[str, AiraMoeLayer]:
    """The layers holding `adapter_name`, by their name in the base model (`model.layers.0.mlp.up_proj`)."""
    return {
        name.removeprefix(PEFT_PREFIX): module
        for name, module in model.named_modules()
        if isinstance(module, AiraMoeLayer) and adapter_name in module.aira_A
    }


def _peft_model(model: nn.Module, config: AiraMoeConfig, adapter_name: str) -> PeftModel:
    """A new peft model on a base model, or the given one if it already holds this AIRA-MoE adapter."""
    if not isinstance(model, PeftModel):
        return get_peft_model(model, config, adapter_name=adapter_name)
    existing = model.peft_config.get(adapter_name)
    if existing is None or existing.peft_type != PEFT_TYPE:
        raise AiraMoeError(
            f"initialize_aira_moe got a PeftModel without an AIRA-MoE adapter named {adapter_name!r}; "
            "pass the base model, or a model made by get_peft_model(model, config)."
        )
    model.peft_config[adapter_name] = config
    return model


def _take(dataloader: Iterable[Batch], steps: int) -> list[Batch]:
    batches = list(itertools.islice(iter(dataloader), steps))
    if not batches:
        raise AiraMoeError("initialize_aira_moe: the dataloader yielded no batch to calibrate on.")
    if len(batches) < steps:
        warning_main(f"awsvd_collect_steps={steps}, but the dataloader has only {len(batches)} batches: using them all.")
    return batches


class BaseWeights(Mapping):
    """The adapted layers' frozen weights by name, each read only when asked for.

    A quantised base is dequantised one layer at a time, so reading every weight never holds
    more than one layer's floating-point copy.
    """

    def __init__(self, layers: Mapping[str, AiraMoeLayer]) -> None:
        self.layers = layers

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.layers[name].base_weight()

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def initialize_aira_moe(
    model: nn.Module,
    config: AiraMoeConfig,
    dataloader: Iterable[Batch],
    *,
    adapter_name: str = "default",
    output_dir: Optional[str | Path] = None,
    cache_fields: Optional[Mapping[str, Any]] = None,
    show_progress: bool = True,
) -> PeftModel:
    """Calibrate, allocate ranks, set activation weights and run AwSVD as `config` asks; return the peft model.

    `model` is a transformers model, or a PeftModel made by `get_peft_model(model, config)`.
    `dataloader` yields dicts with `input_ids` and `attention_mask` (padding excluded by the
    mask); its first `config.awsvd_collect_steps` batches are read, so give it shuffled data, the
    same in every process: under torch.distributed, batch k is run by rank k mod world_size and
    the statistics are all-reduced. With `output_dir`, the statistics are cached there (keyed by the
    model's weights, the token ids, the targets and `cache_fields`) and the rank allocation is
    written beside them. Without any technique on, this is `get_peft_model`.
    """
    config = copy.deepcopy(config)
    peft_model = _peft_model(model, config, adapter_name)
    if not config.needs_calibration:
        return peft_model
    layers = adapted_layers(peft_model, adapter_name)
    shapes = {name: (layer.out_features, layer.in_features) for name, layer in layers.items()}
    problem = awsvd_rank_problem(shapes, config)
    if problem is not None:
        raise AiraMoeError(problem)
    batches = _take(dataloader, config.awsvd_collect_steps)
    weights = BaseWeights(layers)
    key = {
        "model_weights": fingerprint_weights(weights),
        "token_ids": fingerprint_batches(batches),
        "batches": len(batches),
        "targets": sorted(layers),
        **(cache_fields or {}),
    }
    cache = Path(output_dir) / CACHE_FILE if output_dir is not None else None
    with peft_model.disable_adapter():  # the base function, with any residual given back
        stats = cached_statistics(
            cache, key, {n: (d_in, d_out) for n, (d_out, d_in) in shapes.items()},
            lambda: collect_statistics(peft_model, layers, batches, show_progress),
        )
    if config.use_layer_wise_rank:
        config.rank_pattern = layer_wise_rank_pattern(weights, stats, config, output_dir)
        peft_model.peft_config[adapter_name] = config
        for name, layer in layers.items():
            layer.update_layer(adapter_name, **layer_kwargs(config, name))
    if config.use_activation_aware:
        apply_activation_weights(layers, stats, config.activation_aware_mode, config.activation_normalize, adapter_name)
    if config.use_awsvd_init:
        apply_awsvd_init(layers, stats, adapter_name, show_progress)
    if torch.cuda.is_available():
        # calibration and the SVDs leave many odd-sized free blocks in PyTorch's cache; on a small (or capped) GPU
        # the first training step's allocations could otherwise be refused although enough memory is free
        torch.cuda.empty_cache()
    return peft_model
