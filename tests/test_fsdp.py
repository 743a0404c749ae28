"""aira_moe under torch FSDP (FULL_SHARD), two gloo processes on the CPU.

The HF Trainer wraps a peft model with peft's `fsdp_auto_wrap_policy`; `aira_moe.tuner.fsdp` extends it so
that the fp32 banks are not flattened with the bf16 base. The run must equal one process without FSDP.
accelerate's FSDP plugin refuses a machine without an accelerator, so the LLaMA-Factory route itself runs
on the GPU (benchmarks/README.md); this test covers the wrapping, training and the full state dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "fsdp_worker.py"
ADAPTED_LAYERS = 2 * 4  # 2 decoder layers x q, v, up, down


@pytest.mark.slow
def test_fsdp_trains_like_one_process_and_gathers_the_adapter(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    command = [torchrun, "--nproc_per_node", "2", "--master_port", "29571", str(WORKER), "fsdp", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from fsdp_worker import main

    main("reference", tmp_path)  # one process, no FSDP: in this one
    reference = json.loads((tmp_path / "reference.json").read_text())
    expected = torch.load(tmp_path / "reference.pt")
    for rank in (0, 1):
        run = json.loads((tmp_path / f"fsdp_rank{rank}.json").read_text())
        assert "uniform dtype" in run["peft_policy_error"]
        # one unit per aira_moe layer and one per its base layer, one per decoder layer, the root
        assert run["units"] == 2 * ADAPTED_LAYERS + 2 + 1
        assert run["losses"] == pytest.approx(reference["losses"], rel=1e-5)
        assert reference["losses"][-1] < reference["losses"][0] - 0.005  # it trains
        gathered = torch.load(tmp_path / f"fsdp_rank{rank}.pt")
        assert gathered.keys() == expected.keys() and len(expected) == 4 * ADAPTED_LAYERS  # A, B, omega, w_in
        for key, value in expected.items():  # whole tensors after the steps, not FSDP's shards
            torch.testing.assert_close(gathered[key], value, rtol=1e-4, atol=1e-6)
