"""Quantised bases (bitsandbytes 4- and 8-bit, on this CPU): the AwSVD residual as a separate factor pair.

The frozen weight stays as quantised; the forward subtracts P0 x while the adapter is in use.
Checked: the initialised model computes the quantised base exactly (invariant 1), disabling the
adapter gives it back, a reload onto a fresh quantised base is exact (invariant 3), the adapter
merges onto the unquantised base, and merging into quantised weights is refused in one line.
Then the whole path through the stock `llamafactory-cli` with `quantization_bit: 4`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_python
from test_cli import trainer_losses, write_train_yaml

bnb = pytest.importorskip("bitsandbytes", reason="needs bitsandbytes (in the test extra: `make install`)")

TOKENS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def load(model_dir: Path, bits: int | None):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 4:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_use_double_quant=True, bnb_4bit_quant_storage=torch.float32)
    elif bits == 8:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quantization = None
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=quantization).eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    """The model's logits in eval mode, as calibration runs it (4-bit layers kept from their inference-only repacking)."""
    from aira_moe.techniques.calibration import calibration_mode

    with calibration_mode(model):
        return model(TOKENS).logits


@pytest.mark.parametrize("bits", [4, 8])
def test_awsvd_on_a_quantised_base_keeps_the_invariants(tmp_path, tiny_model_dir, bits):
    from peft import PeftModel

    from aira_moe import AiraMoeConfig, initialize_aira_moe
    from aira_moe.errors import AiraMoeError

    base = load(tiny_model_dir, bits)
    reference = logits(base)
    config = AiraMoeConfig(r=2, num_A=2, num_B=3, collaboration="heuristic", target_modules=["q_proj", "v_proj", "up_proj"],
                           use_activation_aware=True, use_awsvd_init=True, awsvd_collect_steps=2)
    batches = [{"input_ids": TOKENS, "attention_mask": torch.ones_like(TOKENS)}] * 2
    model = initialize_aira_moe(base, config, batches, show_progress=False).eval()
    layers = [m for m in model.modules() if hasattr(m, "aira_A")]
    assert all(layer.quantized for layer in layers) and all(layer.aira_res_left["default"].abs().sum() > 0 for layer in layers)
    assert torch.equal(logits(model), reference), "invariant 1: the initialised model is the quantised base"

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(TOKENS, labels=TOKENS).loss.backward()
    optimizer.step()
    model.eval()
    trained = logits(model)
    assert (trained - reference).abs().max() > 1e-2
    with model.disable_adapter():
        assert torch.equal(logits(model), reference), "the disabled adapter gives the quantised base back"
    model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(load(tiny_model_dir, bits), tmp_path / "adapter").eval()
    assert torch.equal(logits(reloaded), trained), "invariant 3: a reload onto the quantised base is exact"
    with pytest.raises(AiraMoeError, match="cannot be merged into a quantised"):
        reloaded.merge_and_unload()

    unquantised = PeftModel.from_pretrained(load(tiny_model_dir, None), tmp_path / "adapter").eval()
    on_full_base = logits(unquantised)
    merged = logits(unquantised.merge_and_unload())
    assert (merged - on_full_base).abs().max() < 1e-4, "merged onto the unquantised base"
    assert (merged - trained).abs().max() < 0.5, "the unquantised base differs from the quantised one by its rounding only"


@pytest.mark.slow
def test_qlora_trains_resumes_chats_and_exports_through_the_cli(tmp_path, tiny_model_dir, medmcqa_dir):
    """`quantization_bit: 4` in full mode; chat on the 4-bit base (adapter unmerged), export onto the full base."""
    full_mode = dict(quantization_bit=4, max_steps=4, save_steps=2, use_activation_aware=True, use_layer_wise_rank=True,
                     rank_budget=6, min_rank=2, max_rank=4, use_awsvd_init=True, awsvd_collect_steps=2)
    config = write_train_yaml(tmp_path / "train.yaml", tiny_model_dir, medmcqa_dir, tmp_path / "out", **full_mode)
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=tmp_path)
    assert "Quantizing model to 4 bit with bitsandbytes" in log and "AwSVD initialised 14 layers" in log
    losses = trainer_losses(tmp_path / "out")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses.values())

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "out" / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copy(tmp_path / "out" / "aira_moe_calibration.pt", resumed)
    config = write_train_yaml(tmp_path / "resume.yaml", tiny_model_dir, medmcqa_dir, resumed, **full_mode)
    log = run_cli(["llamafactory-cli", "train", str(config)], cwd=tmp_path)
    assert "Resuming training from" in log
    for step, loss in trainer_losses(resumed).items():
        assert loss == pytest.approx(losses[step], rel=1e-3), "the resumed run rebuilds the same quantised model"

    output = run_python(f"""
from llamafactory.chat import ChatModel
chat = ChatModel(dict(model_name_or_path={str(tiny_model_dir)!r}, adapter_name_or_path={str(tmp_path / 'out')!r},
                      finetuning_type="aira_moe", template="chatml", quantization_bit=4, infer_backend="huggingface",
                      do_sample=False, max_new_tokens=4))
print("RESPONSE", chat.chat([{{"role": "user", "content": "Hello?"}}])[0].response_length)
""")
    assert re.search(r"^RESPONSE \d+$", output, re.MULTILINE) and "Merged" not in output

    export = tmp_path / "export.yaml"
    export.write_text(json.dumps({"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(tmp_path / "out"),
                                  "finetuning_type": "aira_moe", "template": "chatml", "export_dir": str(tmp_path / "merged")}))
    run_cli(["llamafactory-cli", "export", str(export)], cwd=tmp_path)
    merged = load(tmp_path / "merged", None)
    assert not any("aira" in name for name, _ in merged.named_parameters())
