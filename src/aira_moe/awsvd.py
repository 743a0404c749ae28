"""AwSVD initialisation (SPEC section 4): start each adapter from the activation-weighted principal part of W.

With S = diag(rms_in) (floored), the top-r SVD W S ≈ U Σ Vᵀ gives B0 = U √Σ / √s and
A0 = √Σ Vᵀ S⁻¹ / √s, so s · B0 A0 is the rank-r part of W that matters most for the observed
inputs. The layer subtracts the adapter's initial product P0 from the frozen weight, so the
model still computes the base model's function at initialisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .calibration import Statistics

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
    """(B0, A0) with s · B0 @ A0 = the rank-r activation-weighted principal part of `weight`, in fp32."""
    if rank > min(weight.shape):
        raise ValueError(f"rank {rank} exceeds the layer's smaller dimension {min(weight.shape)}")
    rms = rms_in.float().to(weight.device)
    scale = rms.clamp_min(FLOOR * rms.max()) if rms.max() > 0 else torch.ones_like(rms)
    u, singular, vh = top_svd(weight.float() * scale, rank)
    root = (singular / scaling).sqrt()
    return (u * root).contiguous(), ((root[:, None] * vh) / scale).contiguous()  # contiguous: broadcast needs it


def _broadcast_from_first_rank(*tensors: torch.Tensor) -> None:
    """SVD signs and randomized sketches can differ per process: everyone takes rank 0's factors."""
    import torch.distributed as dist

    from .calibration import collective_device, is_distributed

    if not is_distributed():
        return
    for tensor in tensors:
        shared = tensor.to(collective_device())
        dist.broadcast(shared, src=0)
        tensor.copy_(shared)


def apply_awsvd_init(model: torch.nn.Module, stats: "Statistics", adapter_name: str = "default") -> int:
    """Initialise every adapted layer of a peft model from AwSVD and subtract its P0; returns the count."""
    from tqdm import tqdm

    from .calibration import is_main_process
    from .tuner import AiraMoeLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, AiraMoeLayer) and adapter_name in m.aira_A]
    for name, layer in tqdm(layers, desc="aira_moe AwSVD", unit="layer", disable=not is_main_process()):
        weight = layer.get_base_layer().weight
        rms_in = stats[name.removeprefix("base_model.model.")].rms_in
        try:
            B0, A0 = awsvd_factors(weight, rms_in, layer.r[adapter_name], layer.scaling[adapter_name])
        except ValueError as error:
            raise ValueError(f"AwSVD cannot initialise {name} ({tuple(weight.shape)}): {error}") from error
        _broadcast_from_first_rank(B0, A0)
        layer.initialise_from_principal_part(adapter_name, B0, A0)
    return len(layers)
