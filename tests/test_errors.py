"""Every refusal of ours is one line on stderr and exit status 2, before any work, in `llamafactory-cli` and `aira-moe`."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from conftest import BIN, REPO, run_python, tiny_llama_config
from test_arguments import BAD_INPUT, train_args

# (overrides, a piece of the expected line); the config-only model gives the layer shapes
MORE_BAD_INPUT = [
    ({"lora_rank": 12, "collaboration": "heuristic", "num_B": 4, "use_awsvd_init": True}, "too large for use_awsvd_init"),
    ({"use_layer_wise_rank": True, "rank_budget": 40, "min_rank": 12}, "`rank_budget` 40 is infeasible"),
    ({"use_layer_wise_rank": True, "rank_budget": 300}, "`rank_budget` 300 is infeasible"),
    ({"use_activation_aware": True, "streaming": True, "max_steps": 2}, "`streaming: true` cannot be combined"),
    ({"adapter_name_or_path": "LORA"}, "holds a LORA adapter"),
    ({"adapter_name_or_path": "BROKEN"}, "cannot read"),
    ({"adapter_name_or_path": "EMPTY"}, "has no adapter_config.json"),
    ({"min_rank": "two"}, r"`min_rank` must be an integer >= 1, got 'two'"),
    ({"max_rank": 0}, r"`max_rank` must be an integer >= 1, got 0"),
    ({"num_B": 0}, r"`num_B` must be an integer >= 1, got 0"),
    ({"rank_budget": 2.5}, r"`rank_budget` must be an integer >= 1, got 2.5"),
    ({"lod_threshold_M": "high"}, r"`lod_threshold_M` must be a number > 0, got 'high'"),
    ({"activation_normalize": "yes"}, r"`activation_normalize` must be true or false"),
    ({"use_rslora": 1}, r"`use_rslora` must be true or false"),
    ({"lora_dropout": -0.1}, r"`lora_dropout` must be a number in \[0, 1\)"),
    ({"quantization_bit": 4, "resize_vocab": True}, r"`resize_vocab: true` cannot be combined with `quantization_bit`"),
    ({"enable_liger_kernel": True, "lora_target": "q_proj,lm_head"}, r"`enable_liger_kernel: true` cannot be combined with an adapter on lm_head"),
    ({"use_galore": True}, r"`use_galore: True` is a LoRA-only option"),
    ({"use_adam_mini": True}, r"`use_adam_mini: true` builds its own optimizer.*set `bank_lr_scaling: false`"),
    ({"deepspeed": "ZERO3", "quantization_bit": 4}, r"\(ZeRO-3\) cannot be combined with `quantization_bit`"),
    ({"deepspeed": "ZERO3_NO_GATHER"}, r"needs `zero_optimization.stage3_gather_16bit_weights_on_model_save: true`"),
    ({"deepspeed": "MISSING_JSON"}, r"`deepspeed: .*missing.json` cannot be read as a DeepSpeed JSON config"),
]

WORKER = """
import contextlib, io, json, sys, traceback
from llamafactory.cli import main
results = []
for path in json.loads(sys.argv[1]):
    sys.argv = ["llamafactory-cli", "train", path]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code
        except BaseException:
            code, err = "raised", io.StringIO(traceback.format_exc())
    results.append({"path": path, "code": code, "stderr": err.getvalue()})
print("RESULTS", json.dumps(results))
"""


def bad_configs(tmp_path) -> list[tuple[str, str]]:
    """(YAML path, expected piece) for every bad input; LLaMA-Factory's own errors (unknown keys) are not ours."""
    from peft import LoraConfig

    model = tmp_path / "config-only"
    tiny_llama_config(num_hidden_layers=4).save_pretrained(model)
    LoraConfig(r=4, target_modules=["q_proj"]).save_pretrained(tmp_path / "lora")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    folders = {"LORA": "lora", "BROKEN": "broken", "EMPTY": "empty"}
    zero3 = json.loads((REPO / "examples" / "deepspeed" / "ds_z3_config.json").read_text())
    (tmp_path / "z3.json").write_text(json.dumps(zero3))
    zero3["zero_optimization"].pop("stage3_gather_16bit_weights_on_model_save")
    (tmp_path / "z3_no_gather.json").write_text(json.dumps(zero3))
    deepspeed_files = {"ZERO3": "z3.json", "ZERO3_NO_GATHER": "z3_no_gather.json", "MISSING_JSON": "missing.json"}
    cases = [(overrides, message) for overrides, _, message in BAD_INPUT] + MORE_BAD_INPUT
    configs = []
    for number, (overrides, message) in enumerate(cases):
        values = dict(overrides)
        if values.get("adapter_name_or_path") in folders:
            values["adapter_name_or_path"] = str(tmp_path / folders[values["adapter_name_or_path"]])
        if "deepspeed" in values:
            values["deepspeed"] = str(tmp_path / deepspeed_files[values["deepspeed"]])
        path = tmp_path / f"bad{number}.yaml"
        path.write_text(yaml.safe_dump(train_args(tmp_path, model_name_or_path=str(model), **values)))
        configs.append((str(path), message))
    return configs


def test_every_bad_input_of_llamafactory_cli_is_one_line(tmp_path):
    configs = bad_configs(tmp_path)
    output = run_python(WORKER.replace("sys.argv[1]", repr(json.dumps([path for path, _ in configs]))), timeout=600)
    results = json.loads(output.split("RESULTS ", 1)[1])
    assert len(results) == len(configs) >= 40
    for (path, message), result in zip(configs, results):
        lines = result["stderr"].splitlines()
        assert result["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), (path, result)
        assert re.search(message, lines[0]), (message, lines[0])


@pytest.mark.slow
def test_a_refusal_under_torchrun_is_one_line_before_any_process_starts(tmp_path):
    path, message = bad_configs(tmp_path)[0]
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "PATH": f"{BIN}:/usr/bin:/bin"}
    result = subprocess.run([str(BIN / "llamafactory-cli"), "train", path], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == ["error: `num_A` must be an integer >= 1, got 0."]
    assert "torchrun" not in result.stdout


@pytest.mark.parametrize("case", ["lora", "broken"])
def test_export_lora_refuses_what_is_not_an_aira_moe_adapter_in_one_line(tmp_path, case):
    from peft import LoraConfig

    adapter = tmp_path / "adapter"
    if case == "lora":
        LoraConfig(r=4, target_modules=["q_proj"]).save_pretrained(adapter)
    else:
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("[1,")
    command = [str(BIN / "aira-moe"), "export-lora", "--model", "nowhere", "--adapter", str(adapter), "--output", "x"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert str(adapter) in result.stderr and ("'LORA'" in result.stderr if case == "lora" else "cannot read" in result.stderr)


def test_fsdp_in_one_process_is_refused_before_loading(tmp_path):
    """accelerate's FSDP launch with one process would train and then fail to save (torch's NO_SHARD)."""
    model = tmp_path / "config-only"
    tiny_llama_config(num_hidden_layers=2).save_pretrained(model)
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(train_args(tmp_path, model_name_or_path=str(model))))
    env = {"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "1", "PATH": f"{BIN}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(BIN / "llamafactory-cli"), "train", str(path)], env=env, capture_output=True,
                            text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "FSDP" in lines[0] and "--num_processes 2" in lines[0]
