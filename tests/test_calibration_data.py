"""Calibration data in LLaMA-Factory runs: a seeded sample of the whole mixture, nothing stale, nothing kept between runs."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, run_python
from test_cli import write_train_yaml

from aira_moe.integration.run_data import stratified_sample


def test_every_source_gets_its_share_of_a_seeded_sample():
    sources = ["a"] * 70 + ["b"] * 20 + ["c"] * 10
    picked = stratified_sample(sources, 30, seed=3)
    assert len(set(picked)) == 30 and Counter(sources[i] for i in picked) == {"a": 21, "b": 6, "c": 3}
    assert picked == stratified_sample(sources, 30, seed=3) and picked != stratified_sample(sources, 30, seed=4)
    assert sorted(stratified_sample(sources, 100, seed=0)) == list(range(100))
    assert Counter(sources[i] for i in stratified_sample(sources, 7, seed=0)) == {"a": 5, "b": 1, "c": 1}


def write_alpaca(path: Path, name: str, rows: int, offset: int = 0) -> None:
    records = [{"instruction": f"{name} question {offset + i}: what is {offset + i} plus {i}?", "input": "",
                "output": f"It is {offset + 2 * i}."} for i in range(rows)]
    path.write_text(json.dumps(records))


@pytest.fixture
def mixture_dir(tmp_path) -> Path:
    """Two registered datasets of 24 and 8 rows (a small stand-in for the multi-tasking recipe's mixture)."""
    data = tmp_path / "data"
    data.mkdir()
    write_alpaca(data / "first.json", "first", 24)
    write_alpaca(data / "second.json", "second", 8)
    info = {name: {"file_name": f"{name}.json"} for name in ("first", "second")}
    (data / "dataset_info.json").write_text(json.dumps(info))
    return data


def calibration_config(path: Path, model_dir: Path, data_dir: Path, out: Path, **overrides) -> Path:
    values = dict(dataset="first,second", max_samples=None, max_steps=1, save_steps=1, use_activation_aware=True,
                  awsvd_collect_steps=4, collaboration="fully")
    return write_train_yaml(path, model_dir, data_dir, out, **{**values, **overrides})


@pytest.mark.slow
def test_a_mixture_is_sampled_in_its_shares(tmp_path, tiny_model_dir, mixture_dir):
    config = calibration_config(tmp_path / "mix.yaml", tiny_model_dir, mixture_dir, tmp_path / "out")
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=tmp_path)
    assert "Calibration sample: 16 of 32 training rows (seed 7): first 12, second 4." in log


TWO_RUNS = """
import json, sys
from llamafactory.train.tuner import run_exp
config = {config!r}
run_exp(dict(config))
rewrite = {rewrite!r}
open(rewrite[0], "w").write(rewrite[1])
run_exp(dict(config, overwrite_output_dir=True))
from aira_moe.integration import run_data
print("LEFT OVER", run_data.current())
"""


@pytest.mark.slow
def test_two_trainings_in_one_process_calibrate_on_their_own_data(tmp_path, tiny_model_dir, mixture_dir):
    """New rows under an old dataset name, `overwrite_output_dir: true`: the cached statistics must not be reused.

    With `val_size` the rows are split before tokenization: their dataset tags must survive the split.
    """
    config = yaml.safe_load(calibration_config(tmp_path / "c.yaml", tiny_model_dir, mixture_dir, tmp_path / "out",
                                               val_size=0.25).read_text())
    write_alpaca(tmp_path / "new.json", "first", 24, offset=1000)
    output = run_python(TWO_RUNS.format(config=config, rewrite=[str(mixture_dir / "first.json"),
                                                                (tmp_path / "new.json").read_text()]), timeout=600)
    computed = re.findall(r"Computing calibration statistics: (.*)", output)
    assert len(computed) == 2 and "no cache" in computed[0], output[-3000:]
    assert "token_ids" in computed[1] and "model_weights" not in computed[1]
    assert "Reusing calibration statistics" not in output
    assert "LEFT OVER None" in output
    samples = re.findall(r"Calibration sample: 16 of 24 training rows \(seed 7\): first (\d+), second (\d+)\.", output)
    assert len(samples) == 2 and all(int(a) + int(b) == 16 and int(b) >= 3 for a, b in samples), output[-3000:]
