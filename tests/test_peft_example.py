"""`examples/peft_trainer.py`: AIRA-MoE full mode with plain peft and transformers.Trainer, no LLaMA-Factory."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, run_python

pytestmark = pytest.mark.slow


def test_plain_trainer_example_trains_saves_and_reloads(tmp_path, tiny_model_dir, medmcqa_dir):
    import subprocess

    out = tmp_path / "adapter"
    command = [sys.executable, str(REPO / "examples" / "peft_trainer.py"), "--model", str(tiny_model_dir),
               "--data", str(medmcqa_dir / "medmcqa_train.json"), "--output", str(out), "--steps", "4",
               "--calibration-batches", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "Calibration: 3 batches" in log and "AwSVD initialised 14 layers" in log
    assert "llamafactory" not in "".join(line for line in log.splitlines() if "[aira_moe]" in line)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "AIRA_MOE" and config["collaboration"] == "heuristic"
    assert sum(config["rank_pattern"].values()) == 14 * 4 and (out / "rank_allocation.png").is_file()
    output = run_python(f"""
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r})
tokens = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
before = base(tokens).logits
model = PeftModel.from_pretrained(base, {str(out)!r})
print("CHANGED", (model(tokens).logits - before).abs().max().item() > 1e-4)
print("LLAMAFACTORY", any(m.startswith("llamafactory") for m in sys.modules))
""")
    assert "CHANGED True" in output and "LLAMAFACTORY False" in output
