"""The few collectives the techniques need, each a no-op in a single process, and ZeRO-3's gathering."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def is_main_process() -> bool:
    return rank_and_world_size()[0] == 0


def collective_device() -> torch.device:
    """Where tensors must be for collectives: NCCL takes GPU tensors only (the model may still be on CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over processes (the tensor itself in a single process), on the CPU."""
    if not is_distributed():
        return tensor.cpu()
    shared = tensor.to(collective_device())
    dist.all_reduce(shared, op=dist.ReduceOp.SUM)
    return shared.cpu()


def broadcast_tensors(*tensors: torch.Tensor) -> None:
    """Overwrite every process's tensors with rank 0's, in place."""
    if not is_distributed():
        return
    for tensor in tensors:
        shared = tensor.to(collective_device())
        dist.broadcast(shared, src=0)
        tensor.copy_(shared)


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` in every process (pickled; for small things such as a decision and its reason)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=collective_device())
    return box[0]


def holds_weights() -> bool:
    """Whether this process holds the model's real weights.

    Under FSDP with RAM-efficient loading (accelerate's `fsdp_cpu_ram_efficient_loading`), transformers
    loads them on each node's local rank 0 only and zeros elsewhere; FSDP broadcasts rank 0's at wrap.
    """
    from transformers.integrations.fsdp import is_fsdp_enabled

    return not is_fsdp_enabled() or int(os.environ.get("LOCAL_RANK", "0")) == 0


def weight_holders() -> list[int]:
    """The ranks that hold real weights (every rank, unless RAM-efficient FSDP loading is on)."""
    if not is_distributed():
        return [0]
    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, holds_weights())
    return [rank for rank, holds in enumerate(flags) if holds]


def weights_partitioned() -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the weights (even in one process): every read of one is then a
    collective, so every process must read the same weights in the same order."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@contextmanager
def gathered_forward(model: nn.Module) -> Iterator[None]:
    """Forwards of a ZeRO-3-partitioned model outside DeepSpeed's engine (calibration runs before the Trainer
    wraps the model): each module gathers its own parameters as it starts and gives them back as it ends,
    so one layer's weights are whole at a time, never the model's. A no-op without ZeRO-3."""
    if not weights_partitioned():
        yield
        return
    import deepspeed

    open_gathers: dict[nn.Module, list] = {}

    def gather(module: nn.Module, args: tuple) -> None:
        context = deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=None)
        context.__enter__()
        open_gathers.setdefault(module, []).append(context)

    def release(module: nn.Module, args: tuple, output: Any) -> None:
        open_gathers[module].pop().__exit__(None, None, None)

    handles = []
    for module in model.modules():
        if any(hasattr(parameter, "ds_id") for parameter in module.parameters(recurse=False)):
            handles += [module.register_forward_pre_hook(gather), module.register_forward_hook(release)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
