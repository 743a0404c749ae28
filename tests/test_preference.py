"""Preference and reward stages with `aira_moe` through the stock CLI: the reference is the disabled adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_cli
from test_cli import trainer_losses, write_train_yaml

pytestmark = pytest.mark.slow

FULL_MODE = dict(use_activation_aware=True, use_layer_wise_rank=True, rank_budget=6, min_rank=2, max_rank=4,
                 use_awsvd_init=True, awsvd_collect_steps=2, collaboration="learned")


@pytest.fixture(scope="module")
def preference_dir(tmp_path_factory) -> Path:
    """A pairwise set (chosen / rejected) and a KTO set (response + desirable tag), 16 rows each."""
    data = tmp_path_factory.mktemp("preference")
    pairs = [{"instruction": f"What is {i} plus {i}?", "input": "", "chosen": f"It is {2 * i}.",
              "rejected": f"It is {2 * i + 1}, maybe."} for i in range(16)]
    (data / "pairs.json").write_text(json.dumps(pairs))
    tagged = [{"instruction": f"What is {i} plus {i}?", "input": "", "output": f"It is {2 * i + i % 2}.",
               "tag": i % 2 == 0} for i in range(16)]
    (data / "tagged.json").write_text(json.dumps(tagged))
    info = {
        "pairs": {"file_name": "pairs.json", "ranking": True,
                  "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "tagged": {"file_name": "tagged.json",
                   "columns": {"prompt": "instruction", "query": "input", "response": "output", "kto_tag": "tag"}},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


def run_stage(tmp_path: Path, model: Path, data: Path, name: str, **overrides) -> tuple[str, dict[int, float]]:
    values = dict(max_samples=None, max_steps=3, save_steps=3, per_device_train_batch_size=4, **overrides)
    config = write_train_yaml(tmp_path / f"{name}.yaml", model, data, tmp_path / name, **values)
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=tmp_path)
    return log, trainer_losses(tmp_path / name)


def test_dpo_at_learning_rate_zero_is_log_two_in_full_mode(tmp_path, tiny_model_dir, preference_dir):
    """Policy = reference exactly: the AwSVD residual is given back when the adapter is disabled."""
    log, losses = run_stage(tmp_path, tiny_model_dir, preference_dir, "dpo", stage="dpo", dataset="pairs",
                            learning_rate=0.0, **FULL_MODE)
    assert "Created reference model" not in log and "AwSVD initialised 14 layers" in log
    assert "Calibration sample: 8 of 16 training rows (seed 7): pairs 8." in log
    assert len(losses) == 3 and all(loss == pytest.approx(math.log(2), abs=1e-4) for loss in losses.values()), losses


# ORPO stands for the reference-free DPO losses (SimPO takes the same path through LLaMA-Factory's DPO trainer)
@pytest.mark.parametrize("stage,extra", [("dpo", {"pref_loss": "orpo"}), ("kto", {}), ("rm", {})])
def test_preference_and_reward_stages_train(tmp_path, tiny_model_dir, preference_dir, stage, extra):
    dataset = "tagged" if stage == "kto" else "pairs"
    log, losses = run_stage(tmp_path, tiny_model_dir, preference_dir, stage, stage=stage, dataset=dataset,
                            use_activation_aware=True, awsvd_collect_steps=2, **extra)
    assert "Created reference model" not in log
    assert f"{dataset} 8." in log and len(losses) == 3 and all(math.isfinite(v) for v in losses.values())
    assert json.loads((tmp_path / stage / "adapter_config.json").read_text())["peft_type"] == "AIRA_MOE"
