"""Calibration statistics (SPEC 2): exact sums, padding excluded, distributed equals single-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_llama
from torch import nn

from aira_moe.calibration import cache_key, collect_statistics, load_statistics, save_statistics

TORCHRUN_SCRIPT = REPO / "tests" / "calibration_worker.py"


def linear_modules(model) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in name}


def make_batches(seed: int = 0, count: int = 4, pad_to: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches of 3 sequences of random lengths, right-padded (pad id 0, mask 0)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(3, 10, (3,), generator=generator).tolist()
        width = max(max(lengths), pad_to)
        ids = torch.zeros(3, width, dtype=torch.long)
        mask = torch.zeros(3, width, dtype=torch.long)
        for row, length in enumerate(lengths):
            ids[row, :length] = torch.randint(1, 128, (length,), generator=generator)
            mask[row, :length] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def test_statistics_equal_direct_sums_over_real_tokens():
    model = tiny_llama()
    modules = linear_modules(model)
    batches = make_batches()
    stats = collect_statistics(model, modules, batches, steps=len(batches))
    name = "model.layers.1.mlp.down_proj"
    captured_in, captured_out = [], []

    def capture(module, inputs, output) -> None:
        captured_in.append(inputs[0])
        captured_out.append(output)

    handle = modules[name].register_forward_hook(capture)
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    handle.remove()
    masks = [b["attention_mask"].bool() for b in batches]
    x = torch.cat([c[m] for c, m in zip(captured_in, masks)])
    y = torch.cat([c[m] for c, m in zip(captured_out, masks)])
    assert stats[name].tokens == sum(int(m.sum()) for m in masks) == x.shape[0]
    torch.testing.assert_close(stats[name].sum_sq_in, x.pow(2).sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats[name].sum_sq_out, y.pow(2).sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats[name].rms_in, (x.pow(2).mean(0)).sqrt(), rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_the_statistics():
    model = tiny_llama()
    modules = linear_modules(model)
    tight = collect_statistics(model, modules, make_batches(), steps=4)
    padded = collect_statistics(model, modules, make_batches(pad_to=24), steps=4)
    for name in modules:
        assert tight[name].tokens == padded[name].tokens
        torch.testing.assert_close(tight[name].sum_sq_in, padded[name].sum_sq_in, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tight[name].sum_sq_out, padded[name].sum_sq_out, rtol=1e-5, atol=1e-6)


def test_only_the_first_steps_batches_are_used():
    model = tiny_llama()
    modules = linear_modules(model)
    batches = make_batches(count=6)
    assert collect_statistics(model, modules, batches, steps=2)["model.layers.0.mlp.up_proj"].tokens == sum(
        int(b["attention_mask"].sum()) for b in batches[:2]
    )


def test_model_is_left_in_its_training_mode():
    model = tiny_llama().train()
    collect_statistics(model, linear_modules(model), make_batches(count=1), steps=1)
    assert model.training


def test_cache_round_trip_and_key_mismatch(tmp_path):
    model = tiny_llama()
    stats = collect_statistics(model, linear_modules(model), make_batches(count=1), steps=1)
    key = cache_key(model="m", steps=1)
    save_statistics(tmp_path / "c.pt", key, stats)
    loaded = load_statistics(tmp_path / "c.pt", key)
    assert set(loaded) == set(stats)
    for name in stats:
        assert torch.equal(loaded[name].sum_sq_in, stats[name].sum_sq_in)
    assert load_statistics(tmp_path / "c.pt", cache_key(model="m", steps=2)) is None


@pytest.mark.slow
def test_two_process_statistics_equal_single_process(tmp_path):
    """Invariant 7: gloo all-reduce over 2 torchrun processes = one process over the same batches.

    Both processes also end with the same ranks and bit-identical AwSVD state (SPEC 4, distributed).
    """
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(TORCHRUN_SCRIPT), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    model = tiny_llama()
    single = collect_statistics(model, linear_modules(model), make_batches(count=5), steps=5)
    for rank in (0, 1):
        distributed = torch.load(tmp_path / f"stats_rank{rank}.pt")
        for name, stat in single.items():
            assert distributed[name]["tokens"] == stat.tokens
            torch.testing.assert_close(distributed[name]["sum_sq_in"], stat.sum_sq_in, rtol=1e-6, atol=0)
            torch.testing.assert_close(distributed[name]["sum_sq_out"], stat.sum_sq_out, rtol=1e-6, atol=0)
    ranks = [json.loads((tmp_path / f"ranks_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1] and sum(ranks[0]) == 7
    checksums = [(tmp_path / f"checksum_rank{rank}.txt").read_text() for rank in (0, 1)]
    assert checksums[0] == checksums[1]  # bit-identical AwSVD factors, residuals and W - P0
