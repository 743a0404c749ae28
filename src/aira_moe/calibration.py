"""Activation statistics of the frozen base model (SPEC section 2), shared by all three techniques.

For every target linear layer: per-input-channel Σx², per-output-channel Σy² and the token
count, computed by forward hooks over non-padding tokens only, so per-token activations are
never kept. Each batch is reduced in fp32; the running sums are fp64, which makes them exact
enough that splitting the batches across processes does not change the fp32 result. Batch k of the calibration set is processed by rank k mod world_size and the
sums are all-reduced: every process ends with the statistics a single process would compute
over the same batches (invariant 7).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

CACHE_FILE = "aira_moe_calibration.pt"


@dataclass
class LayerStatistics:
    """fp32 sums over the calibration tokens of one linear layer."""

    sum_sq_in: torch.Tensor
    sum_sq_out: torch.Tensor
    tokens: int

    @property
    def rms_in(self) -> torch.Tensor:
        return (self.sum_sq_in / max(self.tokens, 1)).sqrt()

    @property
    def rms_out(self) -> torch.Tensor:
        return (self.sum_sq_out / max(self.tokens, 1)).sqrt()

    @property
    def input_norm(self) -> torch.Tensor:
        """‖X_j‖₂ per input channel, the activation factor of the LOD score."""
        return self.sum_sq_in.sqrt()


Statistics = dict[str, LayerStatistics]


class _Accumulator:
    """Forward hooks that add each batch's masked squared activations into fp32 sums."""

    def __init__(self, modules: dict[str, nn.Linear]) -> None:
        self.modules = modules
        self.mask: Optional[torch.Tensor] = None
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.tokens = 0

    def hook(self, name: str) -> Callable:
        def accumulate(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
            keep = self.mask.reshape(-1).to(output.device)
            x = inputs[0].reshape(-1, module.in_features)[keep].float()
            y = output.reshape(-1, module.out_features)[keep].float()
            if name not in self.sums:
                self.sums[name] = [x.new_zeros(module.in_features, dtype=torch.float64),
                                   y.new_zeros(module.out_features, dtype=torch.float64)]
            self.sums[name][0] += x.pow(2).sum(0)
            self.sums[name][1] += y.pow(2).sum(0)

        return accumulate

    @torch.no_grad()
    def run(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], total: int, show: bool) -> None:
        handles = [module.register_forward_hook(self.hook(name)) for name, module in self.modules.items()]
        device = next(model.parameters()).device
        try:
            for batch in tqdm(batches, total=total, desc="aira_moe calibration", unit="batch", disable=not show):
                attention_mask = batch["attention_mask"].to(device)
                self.mask = attention_mask.bool()
                self.tokens += int(self.mask.sum())
                model(input_ids=batch["input_ids"].to(device), attention_mask=attention_mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()

    def statistics(self) -> Statistics:
        """The sums of this process, all-reduced across processes when distributed."""
        names = sorted(self.modules)
        device = self.modules[names[0]].weight.device
        parts = []
        for name in names:  # a rank that saw no batch still contributes zeros to the reduction
            module = self.modules[name]
            sums = self.sums.get(name) or [torch.zeros(module.in_features), torch.zeros(module.out_features)]
            parts += [part.to(device, torch.float64) for part in sums]
        flat = torch.cat([*parts, torch.tensor([float(self.tokens)], dtype=torch.float64, device=device)])
        if is_distributed():
            flat = flat.to(collective_device())
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu()
        stats, offset = {}, 0
        for name in names:
            d_in, d_out = self.modules[name].in_features, self.modules[name].out_features
            chunk = flat[offset : offset + d_in + d_out].float()
            stats[name] = LayerStatistics(chunk[:d_in].clone(), chunk[d_in:].clone(), int(flat[-1]))
            offset += d_in + d_out
        return stats


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def collective_device() -> torch.device:
    """Where tensors must be for collectives: NCCL takes GPU tensors only (the model may still be on CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_batches(batches: Iterable[Any], steps: int, rank: int, world_size: int) -> Iterator[Any]:
    """Batch k of the first `steps` goes to rank k mod world_size."""
    for index, batch in enumerate(batches):
        if index >= steps:
            return
        if index % world_size == rank:
            yield batch


def collect_statistics(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Iterable[dict[str, torch.Tensor]],
    steps: int,
) -> Statistics:
    """Run the frozen model (eval mode, no grad) over this process's share of `steps` batches."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
    accumulator = _Accumulator(modules)
    was_training = model.training
    model.eval()
    try:
        accumulator.run(model, shard_batches(batches, steps, rank, world_size), math.ceil(steps / world_size), rank == 0)
    finally:
        model.train(was_training)
    return accumulator.statistics()


def cache_key(**fields: Any) -> str:
    """A stable digest of what the statistics depend on (model, data, cutoff, steps, seed, targets)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def save_statistics(path: Path, key: str, stats: Statistics) -> None:
    payload = {"key": key, "stats": {n: (s.sum_sq_in, s.sum_sq_out, s.tokens) for n, s in stats.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_statistics(path: Path, key: str) -> Optional[Statistics]:
    """Cached statistics if they were computed for the same key, else None."""
    if not path.is_file():
        return None
    payload = torch.load(path, weights_only=True)
    if payload.get("key") != key:
        return None
    return {n: LayerStatistics(a, b, int(t)) for n, (a, b, t) in payload["stats"].items()}
