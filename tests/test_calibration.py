"""Calibration statistics (docs/method.md §2): exact sums, padding excluded, the cache, distributed = single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_llama
from torch import nn

from aira_moe import AiraMoeConfig, initialize_aira_moe
from aira_moe.techniques.calibration import CACHE_FILE, collect_statistics

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
    stats = collect_statistics(model, modules, batches)
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
    tight = collect_statistics(model, modules, make_batches())
    padded = collect_statistics(model, modules, make_batches(pad_to=24))
    for name in modules:
        assert tight[name].tokens == padded[name].tokens
        torch.testing.assert_close(tight[name].sum_sq_in, padded[name].sum_sq_in, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tight[name].sum_sq_out, padded[name].sum_sq_out, rtol=1e-5, atol=1e-6)


def full_config(**overrides) -> AiraMoeConfig:
    values = dict(r=2, num_A=2, num_B=3, collaboration="heuristic", target_modules="all-linear",
                  use_activation_aware=True, use_awsvd_init=True, awsvd_collect_steps=2)
    return AiraMoeConfig(**{**values, **overrides})


def residuals(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.state_dict().items() if "aira_res_left" in n or "aira_w_in" in n}


def test_only_the_first_steps_batches_are_read(caplog):
    batches = make_batches(count=6)
    model = initialize_aira_moe(tiny_llama(), full_config(awsvd_collect_steps=2), iter(batches), show_progress=False)
    again = initialize_aira_moe(tiny_llama(), full_config(awsvd_collect_steps=2), batches[:2], show_progress=False)
    other = initialize_aira_moe(tiny_llama(), full_config(awsvd_collect_steps=2), batches[1:3], show_progress=False)
    assert all(torch.equal(a, b) for a, b in zip(residuals(model).values(), residuals(again).values()))
    assert not all(torch.equal(a, b) for a, b in zip(residuals(model).values(), residuals(other).values()))


def test_model_is_left_in_its_training_mode():
    model = tiny_llama().train()
    collect_statistics(model, linear_modules(model), make_batches(count=1))
    assert model.training


def calibrate_with_cache(out, batches, log, **overrides):
    """initialize_aira_moe with its cache in `out`; returns the adapter state and what it logged about the cache."""
    from aira_moe.logs import logger

    logger()  # give the package logger its handler, then listen to it
    handler = log.handler
    logger().addHandler(handler)
    try:
        model = initialize_aira_moe(tiny_llama(), full_config(**overrides), batches, output_dir=out, show_progress=False)
    finally:
        logger().removeHandler(handler)
    messages = [r.getMessage() for r in log.records if "calibration statistics" in r.getMessage()]
    log.clear()
    return residuals(model), messages[-1]


def test_cache_is_reused_only_for_the_same_tokens_model_and_targets(tmp_path, caplog):
    batches = make_batches(count=2)
    first, said = calibrate_with_cache(tmp_path, batches, caplog)
    assert said.startswith("Computing") and "no cache" in said and (tmp_path / CACHE_FILE).is_file()
    reused, said = calibrate_with_cache(tmp_path, batches, caplog)
    assert said.startswith("Reusing")
    assert all(torch.equal(first[n], reused[n]) for n in first)
    _, said = calibrate_with_cache(tmp_path, make_batches(seed=5, count=2), caplog)  # new rows, same "dataset"
    assert said.startswith("Computing") and "token_ids" in said and "targets" not in said
    _, said = calibrate_with_cache(tmp_path, batches, caplog, target_modules=["q_proj", "v_proj"])
    assert "targets" in said
    (tmp_path / CACHE_FILE).write_bytes(b"not a torch file")
    _, said = calibrate_with_cache(tmp_path, batches, caplog)
    assert "unreadable" in said


@pytest.mark.slow
def test_two_process_statistics_equal_single_process(tmp_path):
    """Invariant 7: gloo all-reduce over 2 torchrun processes = one process over the same batches.

    `initialize_aira_moe` in both processes ends with the same ranks and bit-identical state, and on the second
    call rank 0 alone reads its cache (rank 1 has none, as on nodes without a shared disk) and tells rank 1.
    Under RAM-efficient FSDP loading (only local rank 0 holds real weights) the statistics, ranks and adapter
    still come out right, from rank 0; under DeepSpeed ZeRO-3 they equal the unpartitioned run's.
    """
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nproc_per_node", "2", "--master_port", "29533", str(TORCHRUN_SCRIPT), str(tmp_path)]
    # this environment's bin first, as for the CLI tests: DeepSpeed's JIT-built CPU op is then built by one ninja
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    model = tiny_llama()
    single = collect_statistics(model, linear_modules(model), make_batches(count=5))
    for rank, prefix in ((0, ""), (1, ""), (0, "ram_efficient_"), (1, "ram_efficient_")):
        distributed = torch.load(tmp_path / f"{prefix}stats_rank{rank}.pt")
        for name, stat in single.items():
            assert distributed[name]["tokens"] == stat.tokens
            torch.testing.assert_close(distributed[name]["sum_sq_in"], stat.sum_sq_in, rtol=1e-6, atol=0)
            torch.testing.assert_close(distributed[name]["sum_sq_out"], stat.sum_sq_out, rtol=1e-6, atol=0)
    results = [json.loads((tmp_path / f"result_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0]["ranks"] == results[1]["ranks"] and sum(dict(results[0]["ranks"]).values()) == 7 * 7
    # bit-identical factors, residuals and W - P0 in both processes, computed and then reused from rank 0's cache
    assert len({r[attempt] for r in results for attempt in ("first", "second")}) == 1
    assert [r["cache_on_disk"] for r in results] == [True, False]
    # RAM-efficient FSDP loading (rank 1 holds zeros): rank 0 calibrates and allocates, both get its adapter
    assert results[0]["ram_efficient_adapter"] == results[1]["ram_efficient_adapter"]
    assert results[0]["ram_efficient_ranks"] == results[1]["ram_efficient_ranks"] == results[0]["ranks"]
    assert "Reusing calibration statistics" in result.stderr
    # DeepSpeed ZeRO-3 (weights partitioned at load, gathered one layer at a time when read): the same adapter,
    # factors, residuals and W - P0, bit for bit, as without ZeRO-3
    assert results[0]["zero3_partitioned"] and results[1]["zero3_partitioned"]
    assert results[0]["zero3_state"] == results[1]["zero3_state"] == results[0]["first"]
    assert results[0]["zero3_ranks"] == results[0]["ranks"]
