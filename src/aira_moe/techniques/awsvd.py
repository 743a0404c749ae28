"""AwSVD initialisation (docs/method.md §4): start the experts from the activation-weighted principal part of W.

With S = diag(rms_in) (floored), the top-(K·r) SVD W S ≈ U Σ Vᵀ gives B0 = U √Σ / √s and
A0 = √Σ Vᵀ S⁻¹ / √s; K = 1 for `fully` (one rank-r product by construction) and min(M, N)
otherwise, so each expert pairing starts on its own slice of r directions. The layer subtracts
the experts' initial product P0 from the frozen weight, so the model still computes the base
model's function at initialisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Optional

import torch
from tqdm import tqdm

from ..distributed import broadcast_tensors, is_main_process
from ..errors import AiraMoeError
from ..logs import info_main
from ..tuner import AiraMoeLayer
from ..tuner.config import AiraMoeConfig, expert_pairings
from .calibration import Statistics
from .rank_allocation import block_of, largest_block_rank

RANDOMIZED_ABOVE = 1024  # min(d_out, d_in) above which the randomized SVD is used
FLOOR = 1e-3  # zero-activation channels: rms floored at this fraction of the largest rms


def randomized_svd(
    matrix: torch.Tensor, rank: int, oversample: int = 16, power_iterations: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` SVD by a randomized range finder with power iterations (Halko et al.), seeded."""
    generator = torch.Generator(device=matrix.device).manual_seed(seed)
    sketch = min(rank + oversample, min(matrix.shape))
    probe = torch.randn(matrix.shape[1], sketch, generator=generator, device=matrix.device, dtype=matrix.dtype)
    basis = torch.linalg.qr(matrix @ probe).Q
    for _ in range(power_iterations):
        basis = torch.linalg.qr(matrix @ torch.linalg.qr(matrix.T @ basis).Q).Q
    small_u, singular, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return (basis @ small_u)[:, :rank], singular[:rank], vh[:rank]


def top_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact for small layers, randomized for large ones; always fp32."""
    matrix = matrix.float()
    if min(matrix.shape) > RANDOMIZED_ABOVE:
        return randomized_svd(matrix, rank)
    u, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank], singular[:rank], vh[:rank]


def awsvd_factors(
    weight: torch.Tensor, rms_in: torch.Tensor, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B0, A0) with s · B0 @ A0 = the rank-`rank` activation-weighted principal part of `weight`, in fp32."""
    if rank > min(weight.shape):
        raise AiraMoeError(f"rank {rank} exceeds the layer's smaller dimension {min(weight.shape)}")
    rms = rms_in.float().to(weight.device)
    scale = rms.clamp_min(FLOOR * rms.max()) if rms.max() > 0 else torch.ones_like(rms)
    u, singular, vh = top_svd(weight.float() * scale, rank)
    root = (singular / scaling).sqrt()
    return (u * root).contiguous(), ((root[:, None] * vh) / scale).contiguous()  # contiguous: broadcast needs it


def awsvd_rank_problem(
    shapes: Mapping[str, tuple[int, int]], config: AiraMoeConfig, label: Callable[[str], str] = str
) -> Optional[str]:
    """Why AwSVD cannot initialise layers of these (d_out, d_in) shapes under `config`, or None.

    Each layer needs K·r singular directions (K slices, docs/method.md §4), at most its smaller dimension.
    """
    if not config.use_awsvd_init or not shapes:
        return None
    slices = expert_pairings(config.collaboration, config.num_A, config.num_B)
    field = label("max_rank") if config.use_layer_wise_rank else label("r")
    rank = largest_block_rank(config, len({block_of(name) for name in shapes}) if config.use_layer_wise_rank else 1)
    name, (d_out, d_in) = min(shapes.items(), key=lambda item: min(item[1]))
    if slices * rank <= min(d_out, d_in):
        return None
    return (
        f"`{field}` {rank} is too large for use_awsvd_init: {name} ({d_out} x {d_in}) holds at most "
        f"{min(d_out, d_in)} singular directions and collaboration {config.collaboration} with "
        f"{config.num_A} A x {config.num_B} B needs {slices} x rank = {slices * rank}; "
        f"allowed: {field} <= {min(d_out, d_in) // slices}."
    )


def apply_awsvd_init(
    layers: Mapping[str, AiraMoeLayer], stats: Statistics, adapter_name: str = "default", show_progress: bool = True
) -> int:
    """Initialise every layer's experts from AwSVD and subtract their P0 from its frozen weight; returns the count.

    Every process takes rank 0's factors (SVD signs and randomized sketches may differ per process).
    """
    started = time.time()
    for name, layer in tqdm(layers.items(), desc="aira_moe AwSVD", unit="layer",
                            disable=not (show_progress and is_main_process())):
        weight = layer.base_weight()
        slices = expert_pairings(layer.collaboration[adapter_name], layer.num_A[adapter_name], layer.num_B[adapter_name])
        rank = slices * layer.r[adapter_name]
        try:
            B0, A0 = awsvd_factors(weight, stats[name].rms_in, rank, layer.scaling[adapter_name])
        except ValueError as error:
            raise AiraMoeError(f"AwSVD cannot initialise {name} ({tuple(weight.shape)}): {error}") from error
        broadcast_tensors(B0, A0)
        layer.initialise_from_slices(adapter_name, B0, A0)
    info_main(f"AwSVD initialised {len(layers)} layers in {time.time() - started:.1f} s.")
    return len(layers)
