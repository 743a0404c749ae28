"""Invariant 3: peft's own save/load round-trips, in a fresh process that never imports aira_moe."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_python, tiny_llama
from peft import get_peft_model
from safetensors.torch import load_file

from aira_moe import AiraMoeConfig

RELOAD = """
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM
for folder in {folders!r}:
    base = LlamaForCausalLM.from_pretrained(folder + "/base").eval()
    model = PeftModel.from_pretrained(base, folder + "/adapter").eval()
    torch.save(model(torch.load(folder + "/tokens.pt")).logits, folder + "/reloaded.pt")
"""


def saved_adapter(tmp_path, tokens, collaboration: str, **kwargs):
    """Train-like state (random B), saved base + adapter, and the logits to reproduce."""
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    config = AiraMoeConfig(r=4, num_A=2, num_B=3, collaboration=collaboration, target_modules="all-linear",
                           init_weights=False, **kwargs)
    model = get_peft_model(base, config).eval()
    model.save_pretrained(tmp_path / "adapter")
    torch.save(tokens, tmp_path / "tokens.pt")
    return model(tokens).logits


def reload_all(folders: list, env=None) -> list[torch.Tensor]:
    """Logits of each folder's saved base + adapter, reloaded in one fresh process."""
    run_python(RELOAD.format(folders=[str(folder) for folder in folders]), env=env)
    return [torch.load(folder / "reloaded.pt") for folder in folders]


def reload_logits(tmp_path, env=None) -> torch.Tensor:
    return reload_all([tmp_path], env)[0]


def test_reload_in_fresh_process_gives_identical_logits(tmp_path, tokens):
    collaborations = ["fully", "heuristic", "learned"]
    expected = [saved_adapter(tmp_path / name, tokens, name) for name in collaborations]
    reloaded = reload_all([tmp_path / name for name in collaborations])
    for name, want, got in zip(collaborations, expected, reloaded):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_saved_files_carry_shapes_and_weights(tmp_path, tokens):
    saved_adapter(tmp_path, tokens, "learned", rank_pattern={"model.layers.0.mlp.up_proj": 7})
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_A"], config["num_B"]) == ("AIRA_MOE", 2, 3)
    assert config["rank_pattern"] == {"model.layers.0.mlp.up_proj": 7}
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    up = "base_model.model.model.layers.0.mlp.up_proj"
    assert weights[f"{up}.aira_A"].shape == (2 * 7, 32)
    assert weights[f"{up}.aira_B"].shape == (64, 3 * 7)
    assert weights[f"{up}.aira_omega"].shape == (3, 2)
    assert all(key.rsplit(".", 1)[-1] in ("aira_A", "aira_B", "aira_omega") for key in weights)


def test_fixed_mix_is_not_saved(tmp_path, tokens):
    saved_adapter(tmp_path, tokens, "fully")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert not any("omega" in key or "mix" in key for key in weights)


def test_without_the_hook_peft_does_not_know_the_type(tmp_path, tokens):
    """The start-up hook is what teaches a plain process `AIRA_MOE`; switched off, loading fails."""
    saved_adapter(tmp_path, tokens, "fully")
    with pytest.raises(AssertionError, match="AIRA_MOE"):
        reload_logits(tmp_path, env={"AIRA_MOE_DISABLE_HOOK": "1"})
