"""Activation statistics of the frozen base model (docs/method.md §2), shared by all three techniques.

For every adapted layer: per-input-channel Σx², per-output-channel Σy² and the token count,
summed by forward hooks over non-padding tokens only, so per-token activations are never kept.
Each batch is reduced in fp32 and the running sums are fp64, exact enough that splitting the
batches across processes does not change the fp32 result: batch k goes to rank k mod world_size
(among the processes that hold the real weights: under RAM-efficient FSDP loading, each node's
local rank 0) and the sums are all-reduced, so every process ends with the statistics one process
would compute over the same batches (invariant 7).

The cache stores the statistics with every field they depend on; rank 0 alone reads it and tells
the others whether it holds, so processes without a shared disk still agree.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from ..distributed import (
    all_reduce_sum, broadcast_object, broadcast_tensors, gathered_forward, is_main_process, rank_and_world_size,
    weight_holders, weights_partitioned,
)
from ..logs import info_main

CACHE_FILE = "aira_moe_calibration.pt"
Batch = Mapping[str, torch.Tensor]


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
    """Forward hooks that add each batch's masked squared activations into fp64 sums."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = modules
        self.mask: Optional[torch.Tensor] = None
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.tokens = 0

    def hook(self, name: str) -> Callable:
        def accumulate(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
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
    def run(self, model: nn.Module, batches: list[Batch], show: bool, filler: Batch, extra_forwards: int) -> None:
        """Sum over `batches`, then run `filler` `extra_forwards` times uncounted: under ZeRO-3 a forward is
        a collective, so every process must run as many as the others."""
        device = next(model.parameters()).device
        with gathered_forward(model):
            handles = [module.register_forward_hook(self.hook(name)) for name, module in self.modules.items()]
            try:
                for batch in tqdm(batches, total=len(batches), desc="aira_moe calibration", unit="batch",
                                  disable=not show):
                    attention_mask = batch["attention_mask"].to(device)
                    self.mask = attention_mask.bool()
                    self.tokens += int(self.mask.sum())
                    model(input_ids=batch["input_ids"].to(device), attention_mask=attention_mask, use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            for _ in range(extra_forwards):
                model(input_ids=filler["input_ids"].to(device), attention_mask=filler["attention_mask"].to(device),
                      use_cache=False)

    def statistics(self) -> Statistics:
        """The sums of this process, all-reduced across processes when distributed."""
        local = {}
        for name, module in self.modules.items():  # a rank that saw no batch still contributes zeros
            sums = self.sums.get(name) or [torch.zeros(module.in_features), torch.zeros(module.out_features)]
            local[name] = LayerStatistics(sums[0].cpu().double(), sums[1].cpu().double(), self.tokens)
        shapes = {name: (m.in_features, m.out_features) for name, m in self.modules.items()}
        return unflatten(all_reduce_sum(flatten(local)), shapes)


def flatten(stats: Statistics) -> torch.Tensor:
    """One fp64 vector of all sums (sorted by layer name) and the token count, for a collective."""
    parts = [torch.cat([stats[n].sum_sq_in, stats[n].sum_sq_out]).double() for n in sorted(stats)]
    return torch.cat([*parts, torch.tensor([float(next(iter(stats.values())).tokens)], dtype=torch.float64)])


def unflatten(flat: torch.Tensor, shapes: Mapping[str, tuple[int, int]]) -> Statistics:
    stats, offset = {}, 0
    for name in sorted(shapes):
        d_in, d_out = shapes[name]
        chunk = flat[offset : offset + d_in + d_out].float()
        stats[name] = LayerStatistics(chunk[:d_in].clone(), chunk[d_in:].clone(), int(flat[-1]))
        offset += d_in + d_out
    return stats


def shard(batches: Iterable[Batch], rank: int, holders: list[int]) -> Iterator[Batch]:
    """Batch k goes to holders[k mod len(holders)]: disjoint shards that together are all the batches."""
    for index, batch in enumerate(batches):
        if holders[index % len(holders)] == rank:
            yield batch


def collect_statistics(
    model: nn.Module, modules: Mapping[str, nn.Module], batches: list[Batch], show_progress: bool = True
) -> Statistics:
    """Run the model (eval mode, no grad) over this process's shard of `batches`; sums all-reduced.

    Only processes that hold the real weights take batches (all of them, but under RAM-efficient
    FSDP loading); the others contribute zeros to the sums. Under ZeRO-3 each module gathers its
    partitioned weights as it runs, and a process with one batch fewer runs one uncounted forward.
    """
    rank, _ = rank_and_world_size()
    holders = weight_holders()
    mine = list(shard(batches, rank, holders))
    extra_forwards = -(-len(batches) // len(holders)) - len(mine) if weights_partitioned() else 0
    accumulator = _Accumulator(modules)
    started = time.time()
    with calibration_mode(model):
        accumulator.run(model, mine, show_progress and rank == 0, batches[0], extra_forwards)
    stats = accumulator.statistics()
    info_main(
        f"Calibration: {len(batches)} batches, {next(iter(stats.values())).tokens} tokens, {len(modules)} layers "
        f"in {time.time() - started:.1f} s."
    )
    return stats


@contextmanager
def calibration_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for reading statistics, except bitsandbytes' 4-bit layers, which stay in training mode.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a `Linear4bit`'s weight into an inference-only layout
    on its first eval-mode forward without grad, and every later forward, in training too, passes no gradient
    through it: a calibration pass would leave a 4-bit base that trains none of its adapters. The layer has no
    dropout, so its training flag changes nothing else. The model's own mode comes back afterwards.
    """
    was_training = model.training
    model.eval()
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            module.training = True
    try:
        yield
    finally:
        model.train(was_training)


def fingerprint_batches(batches: Iterable[Batch]) -> str:
    """A digest of the token ids and masks, so that new rows under an old dataset name are noticed."""
    digest = hashlib.sha256()
    for batch in batches:
        for key in ("input_ids", "attention_mask"):
            tensor = batch[key].detach().cpu().long().contiguous()
            digest.update(f"{key}{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def fingerprint_weights(weights: Mapping[str, torch.Tensor], samples: int = 4096) -> str:
    """A digest of each weight's name, shape, dtype and an evenly strided sample of its values."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        weight = weights[name].detach()
        flat = weight.reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples].float().cpu()
        digest.update(f"{name}{tuple(weight.shape)}{weight.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def _stale_fields(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """What differs between a cache's key and the wanted one, short values shown."""
    def show(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:12] + "..."

    return [f"{name} ({show(saved.get(name))} -> {show(wanted.get(name))})"
            for name in sorted(set(saved) | set(wanted)) if saved.get(name) != wanted.get(name)]


def _read_cache(path: Path, key: Mapping[str, Any]) -> tuple[Optional[Statistics], str]:
    """Cached statistics if they were computed for `key`, else None and why not."""
    if not path.is_file():
        return None, f"no cache at {path}"
    try:
        payload = torch.load(path, weights_only=True)
        saved_key, saved = dict(payload["key"]), payload["stats"]
    except Exception as error:  # noqa: BLE001 - a broken cache is recomputed, never trusted
        return None, f"{path} is unreadable ({type(error).__name__}: {error})"
    stale = _stale_fields(saved_key, key)
    if stale:
        return None, f"{path} was computed for other inputs: " + ", ".join(stale)
    return {n: LayerStatistics(a, b, int(t)) for n, (a, b, t) in saved.items()}, ""


def _write_cache(path: Path, key: Mapping[str, Any], stats: Statistics) -> None:
    payload = {"key": dict(key), "stats": {n: (s.sum_sq_in, s.sum_sq_out, s.tokens) for n, s in stats.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def cached_statistics(
    path: Optional[Path], key: Mapping[str, Any], shapes: Mapping[str, tuple[int, int]], compute: Callable[[], Statistics]
) -> Statistics:
    """`compute()`'s statistics, or the cache's when it was made for exactly `key`.

    Rank 0 decides and broadcasts its decision and, on reuse, the statistics themselves; a
    mismatch is logged with the fields that changed, then everyone recomputes.
    """
    if path is None:
        return compute()
    cached, reason = _read_cache(path, key) if is_main_process() else (None, "")
    reuse, reason = broadcast_object((cached is not None, reason))
    if reuse:
        info_main(f"Reusing calibration statistics from {path} (same model, tokens, targets and settings).")
        flat = flatten(cached) if is_main_process() else torch.zeros(sum(a + b for a, b in shapes.values()) + 1,
                                                                      dtype=torch.float64)
        broadcast_tensors(flat)
        return unflatten(flat, shapes)
    info_main(f"Computing calibration statistics: {reason}.")
    stats = compute()
    if is_main_process():
        _write_cache(path, key, stats)
    return stats
