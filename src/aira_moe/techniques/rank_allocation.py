"""Layer-wise rank allocation under a budget (docs/method.md §3).

θ_l measures how outlier-heavy decoder block l is (LOD, as in OWL): the fraction of its pooled
scores |W_ij|·‖X_j‖₂ above M x their mean. Ranks then maximise Σ_l θ_l log r_l with
Σ_l r_l = budget and min_rank <= r_l <= max_rank. The objective is separable and concave, so
handing out one rank at a time to the block with the largest marginal gain θ_l·log((r+1)/r)
gives the exact integer optimum. The budget counts the per-expert rank r_l that `lora_rank` sets
elsewhere, whatever the collaboration: trainable parameters are (M·d_in + N·d_out)·r_l in every
strategy, while the directions AwSVD starts from are r_l (`fully`) or min(M, N)·r_l.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import torch

from ..distributed import broadcast_object, is_main_process, weights_partitioned
from ..errors import AiraMoeError
from ..logs import info_main
from ..tuner.config import AiraMoeConfig

_BLOCK = re.compile(r"\.(\d+)\.")


def block_of(module_name: str) -> int:
    """Decoder block index of a module: its first numeric path component (`model.layers.3.mlp...` -> 3)."""
    match = _BLOCK.search(f".{module_name}.")
    if match is None:
        raise AiraMoeError(f"cannot tell which decoder block {module_name!r} belongs to (no numeric path component)")
    return int(match.group(1))


def check_budget(num_blocks: int, rank_budget: int, min_rank: int, max_rank: int) -> None:
    """Refuse budgets no allocation can meet, naming the numbers."""
    if num_blocks * min_rank > rank_budget:
        raise AiraMoeError(
            f"`rank_budget` {rank_budget} is infeasible: {num_blocks} layers x min_rank {min_rank} = "
            f"{num_blocks * min_rank} > {rank_budget}. Raise rank_budget or lower min_rank."
        )
    if num_blocks * max_rank < rank_budget:
        raise AiraMoeError(
            f"`rank_budget` {rank_budget} is infeasible: {num_blocks} layers x max_rank {max_rank} = "
            f"{num_blocks * max_rank} < {rank_budget}. Lower rank_budget or raise max_rank."
        )


def lod_theta(
    weights: Mapping[str, torch.Tensor], input_norms: Mapping[str, torch.Tensor], threshold_M: float
) -> dict[int, float]:
    """θ per block from the pooled |W_ij|·‖X_j‖₂ of the block's target layers.

    Two passes over the layers (the block's mean, then the count above M x it) instead of one
    concatenated pool: one layer's scores are held at a time, which is what fits an 8B model's
    block on an 8 GiB card next to its 4-bit weights.
    """
    def scores(name: str) -> torch.Tensor:
        weight = weights[name]
        return weight.float().abs() * input_norms[name].to(weight.device, torch.float32)

    totals, counts, above = defaultdict(float), defaultdict(int), defaultdict(int)
    for name in weights:
        layer_scores = scores(name)
        totals[block_of(name)] += float(layer_scores.sum(dtype=torch.float64))
        counts[block_of(name)] += layer_scores.numel()
    for name in weights:
        block = block_of(name)
        above[block] += int((scores(name) > threshold_M * (totals[block] / counts[block])).sum())
    return {block: above[block] / counts[block] for block in sorted(counts)}


def allocate_ranks(theta: list[float], rank_budget: int, min_rank: int, max_rank: int) -> list[int]:
    """Exact integer maximiser of Σ θ_l log r_l under the budget and bounds (ties go to the lower index)."""
    check_budget(len(theta), rank_budget, min_rank, max_rank)
    if not any(t > 0 for t in theta):
        raise AiraMoeError(
            f"all θ are zero ({len(theta)} blocks): no score exceeds lod_threshold_M x the mean. "
            "Lower lod_threshold_M or use theta_type: uniform."
        )
    ranks = [min_rank] * len(theta)
    heap = [(-t * math.log((min_rank + 1) / min_rank), block) for block, t in enumerate(theta) if min_rank < max_rank]
    heapq.heapify(heap)
    for _ in range(rank_budget - sum(ranks)):
        _, block = heapq.heappop(heap)
        ranks[block] += 1
        r = ranks[block]
        if r < max_rank:
            heapq.heappush(heap, (-theta[block] * math.log((r + 1) / r), block))
    return ranks


def write_allocation(output_dir: Path, theta: list[float], ranks: list[int], theta_type: str) -> None:
    """`rank_allocation.json` and `rank_allocation.png` (θ and rank per block)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"theta_type": theta_type, "theta": theta, "ranks": ranks, "rank_budget": sum(ranks)}
    (output_dir / "rank_allocation.json").write_text(json.dumps(record, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(range(len(ranks)))
    fig, rank_axis = plt.subplots(figsize=(max(6, len(ranks) * 0.3), 3.5))
    rank_axis.bar(blocks, ranks, color="tab:blue", label="rank")
    rank_axis.set_xlabel("decoder block")
    rank_axis.set_ylabel("rank", color="tab:blue")
    theta_axis = rank_axis.twinx()
    theta_axis.plot(blocks, theta, color="tab:red", marker="o", label=f"θ ({theta_type})")
    theta_axis.set_ylabel(f"θ ({theta_type})", color="tab:red")
    rank_axis.set_title(f"aira_moe rank allocation (budget {sum(ranks)})")
    fig.tight_layout()
    fig.savefig(output_dir / "rank_allocation.png", dpi=120)
    plt.close(fig)


def largest_block_rank(config: AiraMoeConfig, num_blocks: int) -> int:
    """The largest rank the allocation can give one block (`r` or the rank pattern without allocation)."""
    if not config.use_layer_wise_rank:
        return max([config.r, *config.rank_pattern.values()])
    return min(config.max_rank, config.rank_budget - (num_blocks - 1) * config.min_rank)


def layer_wise_rank_pattern(
    weights: Mapping[str, torch.Tensor], stats: Mapping, config: AiraMoeConfig, output_dir: Path | None
) -> dict[str, int]:
    """Per-module ranks (one per decoder block) from θ and the budget; the allocation is written to `output_dir`.

    Rank 0 allocates and every process takes its ranks: its weights are real, where under RAM-efficient
    FSDP loading the other processes hold zeros. Under ZeRO-3 reading a weight is a collective, so
    every process computes the allocation (from the same gathered weights) and still takes rank 0's.
    """
    blocks = sorted({block_of(name) for name in weights})
    computes = is_main_process() or weights_partitioned()
    outcome = broadcast_object(_allocation(weights, stats, config, blocks) if computes else None)
    if isinstance(outcome, AiraMoeError):  # raised in every process, none left waiting
        raise outcome
    theta, ranks = outcome
    info_main(f"Layer-wise ranks (budget {config.rank_budget}): {ranks}")
    if output_dir is not None and is_main_process():
        write_allocation(Path(output_dir), theta, ranks, config.theta_type)
    rank_of_block = dict(zip(blocks, ranks))
    return {name: rank_of_block[block_of(name)] for name in weights}


def _allocation(weights: Mapping[str, torch.Tensor], stats: Mapping, config: AiraMoeConfig, blocks: list[str]):
    """(θ per block, rank per block) in `blocks`' order, or the refusal of an infeasible budget."""
    try:
        if config.theta_type == "lod":
            theta_by_block = lod_theta(weights, {name: stats[name].input_norm for name in weights}, config.lod_threshold_M)
        else:
            theta_by_block = dict.fromkeys(blocks, 1.0)
        theta = [theta_by_block[block] for block in blocks]
        return theta, allocate_ranks(theta, config.rank_budget, config.min_rank, config.max_rank)
    except AiraMoeError as refusal:
        return refusal
