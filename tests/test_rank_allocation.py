"""Layer-wise rank allocation (docs/method.md §3, invariant 4): LOD θ and the exact budgeted optimum."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from aira_moe.techniques.rank_allocation import allocate_ranks, block_of, lod_theta, write_allocation


def objective(theta, ranks) -> float:
    return sum(t * math.log(r) for t, r in zip(theta, ranks))


def brute_force(theta, budget, min_rank, max_rank) -> float:
    feasible = (
        ranks
        for ranks in itertools.product(range(min_rank, max_rank + 1), repeat=len(theta))
        if sum(ranks) == budget
    )
    return max(objective(theta, ranks) for ranks in feasible)


@pytest.mark.parametrize("seed", range(25))
def test_greedy_equals_brute_force(seed):
    rng = random.Random(seed)
    blocks = rng.randint(2, 5)
    min_rank = rng.randint(1, 3)
    max_rank = rng.randint(min_rank, 7)
    budget = rng.randint(blocks * min_rank, blocks * max_rank)
    theta = [rng.choice([0.0, rng.random()]) for _ in range(blocks)]
    theta[rng.randrange(blocks)] += 0.01  # at least one positive θ
    ranks = allocate_ranks(theta, budget, min_rank, max_rank)
    assert sum(ranks) == budget
    assert all(min_rank <= r <= max_rank for r in ranks)
    assert objective(theta, ranks) == pytest.approx(brute_force(theta, budget, min_rank, max_rank), abs=1e-12)


def test_equal_theta_spreads_the_budget_evenly():
    assert allocate_ranks([0.3] * 4, 18, 2, 8) == [5, 5, 4, 4]


def test_one_dominant_block_takes_all_it_can():
    assert allocate_ranks([1.0, 0.0, 0.0, 0.0], 14, 2, 8) == [8, 2, 2, 2]
    # what the dominant block cannot take goes to the zero-θ blocks in index order
    assert allocate_ranks([1.0, 0.0, 0.0, 0.0], 20, 2, 8) == [8, 8, 2, 2]


def test_zero_theta_blocks_stay_at_min_rank_until_others_are_full():
    assert allocate_ranks([0.5, 0.0, 0.5], 20, 2, 8) == [8, 4, 8]


def test_all_zero_theta_is_an_error():
    with pytest.raises(ValueError, match="all θ are zero"):
        allocate_ranks([0.0, 0.0], 8, 2, 8)


@pytest.mark.parametrize(
    "blocks,budget,min_rank,max_rank,message",
    [
        (30, 32, 2, 64, r"30 layers x min_rank 2 = 60 > 32"),
        (4, 300, 2, 64, r"4 layers x max_rank 64 = 256 < 300"),
    ],
)
def test_infeasible_budget_names_the_numbers(blocks, budget, min_rank, max_rank, message):
    with pytest.raises(ValueError, match=message):
        allocate_ranks([1.0] * blocks, budget, min_rank, max_rank)


def test_lod_theta_on_a_hand_made_example():
    """|W|=1 everywhere, ‖X‖ = (10, 1, ..., 1): one score in ten exceeds 2 x mean (mean 1.9)."""
    norms = torch.tensor([10.0] + [1.0] * 9)
    one_layer = lod_theta({"model.layers.0.self_attn.q_proj": torch.ones(4, 10)}, {"model.layers.0.self_attn.q_proj": norms}, 2.0)
    assert one_layer == {0: pytest.approx(0.1)}
    weights = {
        "model.layers.0.self_attn.q_proj": torch.ones(4, 10),
        "model.layers.0.mlp.up_proj": -torch.ones(6, 10),  # |W| pools with the block's other layers
        "model.layers.1.self_attn.q_proj": torch.ones(4, 10),
    }
    input_norms = {
        "model.layers.0.self_attn.q_proj": norms,
        "model.layers.0.mlp.up_proj": norms,
        "model.layers.1.self_attn.q_proj": torch.ones(10),
    }
    theta = lod_theta(weights, input_norms, threshold_M=2.0)
    assert theta == {0: pytest.approx(0.1), 1: 0.0}


def test_block_of_reads_the_first_numeric_component():
    assert block_of("model.layers.17.mlp.down_proj") == 17
    with pytest.raises(ValueError, match="lm_head"):
        block_of("lm_head")


def test_allocation_is_written_as_json_and_plot(tmp_path):
    write_allocation(tmp_path, [0.1, 0.3], [3, 5], "lod")
    record = json.loads((tmp_path / "rank_allocation.json").read_text())
    assert record == {"theta_type": "lod", "theta": [0.1, 0.3], "ranks": [3, 5], "rank_budget": 8}
    assert (tmp_path / "rank_allocation.png").read_bytes()[:4] == b"\x89PNG"


def test_lod_theta_equals_the_fraction_of_the_concatenated_pool():
    """Computed in two passes, one layer at a time; the definition is the pooled block's fraction above M x mean."""
    generator = torch.Generator().manual_seed(0)
    weights = {f"model.layers.{b}.{p}": torch.randn(8, 16, generator=generator) ** 3 for b in range(2) for p in ("q_proj", "up_proj")}
    norms = {name: torch.rand(16, generator=generator) * 3 for name in weights}
    theta = lod_theta(weights, norms, threshold_M=1.5)
    for block in range(2):
        pool = torch.cat([(w.abs() * norms[n]).flatten() for n, w in weights.items() if block_of(n) == block])
        assert theta[block] == pytest.approx(float((pool > 1.5 * pool.mean()).float().mean()))
