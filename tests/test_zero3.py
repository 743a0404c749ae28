"""Full mode under DeepSpeed ZeRO-3 through the stock `llamafactory-cli`, two processes on the CPU (gloo).

LLaMA-Factory loads the model partitioned (zero.Init); calibration, LOD and AwSVD gather one layer at a
time, the saved adapter holds the gathered 16-bit weights, and a resumed run continues the same losses.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import REPO, run_cli
from test_cli import trainer_losses, write_train_yaml

pytestmark = pytest.mark.slow

ZERO3 = REPO / "examples" / "deepspeed" / "ds_z3_config.json"
TWO_PROCESSES = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "MASTER_PORT": "29561"}


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, tiny_model_dir, medmcqa_dir):
    work = tmp_path_factory.mktemp("zero3")
    config = write_train_yaml(
        work / "train.yaml", tiny_model_dir, medmcqa_dir, work / "out", max_steps=3, save_steps=2,
        per_device_train_batch_size=2, use_activation_aware=True, use_layer_wise_rank=True, rank_budget=10,
        min_rank=2, max_rank=8, awsvd_collect_steps=3, use_awsvd_init=True, deepspeed=str(ZERO3),
    )
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=work, env=TWO_PROCESSES)
    return work, log


def test_full_mode_trains_and_saves_gathered_weights(zero3_run):
    work, log = zero3_run
    out = work / "out"
    assert "Calibration: 3 batches" in log and "AwSVD initialised 14 layers" in log
    assert len(trainer_losses(out)) == 3
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    ranks = json.loads((out / "adapter_config.json").read_text())["rank_pattern"]
    a_banks = {key: tensor for key, tensor in weights.items() if key.endswith("aira_A")}
    assert len(a_banks) == len(ranks) == 14
    for key, tensor in a_banks.items():  # whole tensors (2 A x its rank rows), not ZeRO-3's empty partitions
        module = key.removeprefix("base_model.model.").removesuffix(".aira_A")
        assert tensor.shape[0] == 2 * ranks[module] and tensor.abs().sum() > 0
    residuals = [tensor for key, tensor in weights.items() if key.endswith("aira_res_left")]
    assert len(residuals) == 14 and all(tensor.abs().sum() > 0 for tensor in residuals)


def test_resume_under_zero3_continues_the_losses(zero3_run):
    """The last checkpoint removed, the same command resumes from the one before (DeepSpeed's own checkpoint)."""
    work, _ = zero3_run
    original = trainer_losses(work / "out")
    shutil.rmtree(work / "out" / "checkpoint-3")
    log = run_cli(["llamafactory-cli", "train", str(work / "train.yaml")], cwd=work, env=TWO_PROCESSES)
    assert "Resuming training from" in log and "checkpoint-2" in log
    assert "Reusing calibration statistics" in log
    resumed = [float(loss) for loss in re.findall(r"'loss': '([0-9.]+)'", log)]
    assert resumed == pytest.approx([original[3]], rel=1e-3)
