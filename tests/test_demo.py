"""The main job, shortened: `aira-moe demo` on the real SmolLM2 model and the real MedMCQA data."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from aira_moe.demo_data import medmcqa_records, write_medmcqa


def test_medmcqa_split_is_disjoint_and_registered(tmp_path):
    paths = write_medmcqa(tmp_path)
    train = json.loads(paths["medmcqa_train"].read_text())
    test = json.loads(paths["medmcqa_test"].read_text())
    assert (len(train), len(test)) == (240, 60)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["medmcqa_test"]["file_name"] == "medmcqa_test.json"
    assert all(r["output"][:2] in ("a)", "b)", "c)", "d)") for r in medmcqa_records())


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, smollm2_dir):
    args = ["--epochs", "0.03", "--calibration-batches", "1", "--questions", "4"]  # one step of 8 rows
    output = run_cli(["aira-moe", "demo", "--output-dir", str(tmp_path), *args], cwd=tmp_path)
    results = json.loads((tmp_path / "demo_results.json").read_text())
    for stage in ("before", "after"):
        assert math.isfinite(results[stage]["answer_nll"]) and results[stage]["answer_nll"] > 0
        assert 0 <= results[stage]["accuracy"] <= 1
    assert results["before"] != results["after"]  # the exported model is the trained one
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert "Calibration: 1 batches" in output and "(4 held out)" in results["dataset"]
    assert "held-out score" in output and "scoring exported model" in output


@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "0", "--epochs must be > 0, got 0.0"),
    ("--calibration-batches", "0", "--calibration-batches must be >= 1, got 0"),
    ("--questions", "61", "--questions must be between 1 and 60 .*got 61"),
])
def test_bad_demo_options_are_refused_before_any_work(tmp_path, flag, value, message):
    from aira_moe.cli import main

    with pytest.raises(SystemExit, match=message):
        main(["demo", "--output-dir", str(tmp_path), flag, value])
    assert not any(tmp_path.iterdir())
