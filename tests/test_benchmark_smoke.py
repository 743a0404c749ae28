"""The speed benchmark's CPU smoke mode: the records are well formed (never a speed check)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_speed_benchmark_smoke_mode(tmp_path):
    output = tmp_path / "speed.json"
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--smoke", "--variants",
               "lora,basic_2x3,basic_2x3_fp32,full_2x3_budget128,naive_2x3", "--checkpointing", "off,on", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(output.read_text())
    assert {"command", "device", "versions", "records", "one_time_costs"} <= set(report)
    variants = ("lora", "basic_2x3", "basic_2x3_fp32", "full_2x3_budget128", "naive_2x3")
    assert [(r["variant"], r["gradient_checkpointing"], r["batch"]) for r in report["records"]] == [
        (v, gc, b) for gc in (False, True) for v in variants for b in (1, 2)
    ]
    for record in report["records"]:
        assert {"model", "variant", "num_A", "num_B", "step_ms", "tokens_per_s", "mfu", "peak_mem_gib"} <= set(record)
        assert record["step_ms"] > 0 and record["tokens_per_s"] > 0
    by_variant = {r["variant"]: r for r in report["records"] if not r["gradient_checkpointing"] and r["batch"] == 2}
    # the naive loop computes the same function, and on an fp32 model the compute dtype changes nothing:
    # same loss after the same steps from the same seed
    assert by_variant["naive_2x3"]["final_loss"] == by_variant["basic_2x3"]["final_loss"]
    assert by_variant["basic_2x3_fp32"]["final_loss"] == by_variant["basic_2x3"]["final_loss"]
    costs = report["one_time_costs"][0]
    assert sum(costs["ranks"]) == 8 and costs["calibration_s"] >= 0  # the smoke budget
