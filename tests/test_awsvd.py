"""AwSVD (docs/method.md §4): the factors, one slice per pairing, the residual, invariants 1, 2, 3 and 6 in full mode."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli, run_python, tiny_llama
from test_calibration import make_batches
from test_layer import aira_layers

from aira_moe import AiraMoeConfig, initialize_aira_moe
from aira_moe.techniques.awsvd import awsvd_factors, randomized_svd

STRATEGIES = [("fully", 2, 3), ("heuristic", 2, 3), ("learned", 3, 2), ("learned", 2, 3)]


def test_factors_give_the_activation_weighted_principal_part():
    torch.manual_seed(0)
    weight, rms = torch.randn(24, 16), torch.rand(16) + 0.1
    B0, A0 = awsvd_factors(weight, rms, rank=4, scaling=0.5)
    u, s, vh = torch.linalg.svd(weight * rms, full_matrices=False)
    expected = (u[:, :4] * s[:4]) @ vh[:4] / rms
    torch.testing.assert_close(0.5 * B0 @ A0, expected, rtol=1e-4, atol=1e-5)


def test_zero_activation_channels_are_floored_not_nan():
    rms = torch.tensor([0.0, 1.0, 2.0, 0.0])
    B0, A0 = awsvd_factors(torch.randn(5, 4), rms, rank=2, scaling=1.0)
    assert torch.isfinite(B0).all() and torch.isfinite(A0).all()


def test_rank_above_the_smaller_dimension_is_refused():
    with pytest.raises(ValueError, match="rank 9 exceeds the layer's smaller dimension 8"):
        awsvd_factors(torch.randn(8, 32), torch.ones(32), rank=9, scaling=1.0)


def test_randomized_svd_matches_the_exact_one():
    """On a slowly decaying spectrum (as in real weights) the sketch is near-optimal, like the exact SVD."""
    generator = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(600, 600, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(500, 500, generator=generator)).Q
    spectrum = torch.logspace(0, -4, 500)
    matrix = (u[:, :500] * spectrum) @ v.T
    approx_u, approx_s, approx_vh = randomized_svd(matrix, rank=16)
    torch.testing.assert_close(approx_s, spectrum[:16], rtol=2e-3, atol=0)
    best_error = torch.linalg.norm(spectrum[16:])  # Eckart-Young: the exact rank-16 residual
    error = torch.linalg.norm(matrix - (approx_u * approx_s) @ approx_vh)
    assert error <= 1.01 * best_error, (error, best_error)


def full_mode_model(collaboration: str, num_A: int, num_B: int, mode: str = "inps"):
    """Tiny model with activation weights, per-module ranks and AwSVD: full mode of docs/method.md §6."""
    config = AiraMoeConfig(
        r=4, num_A=num_A, num_B=num_B, collaboration=collaboration, target_modules="all-linear",
        rank_pattern={"model.layers.1.mlp.down_proj": 6}, use_activation_aware=True, activation_aware_mode=mode,
        use_awsvd_init=True, awsvd_collect_steps=2,
    )
    return initialize_aira_moe(tiny_llama(), config, make_batches(count=2), show_progress=False).eval()


def train_a_little(model) -> None:
    """Move A and B away from their init, as training would."""
    with torch.no_grad():
        for layer in aira_layers(model):
            layer.aira_A["default"].add_(0.05 * torch.randn_like(layer.aira_A["default"]))
            layer.aira_B["default"].add_(0.05 * torch.randn_like(layer.aira_B["default"]))


@pytest.mark.parametrize("collaboration,num_A,num_B", STRATEGIES)
@pytest.mark.parametrize("mode", ["inps", "outps"])
def test_full_mode_init_reproduces_the_base_model(collaboration, num_A, num_B, mode, tokens):
    """Invariant 1: the adapter starts at the principal part and W - P0 + P0 = W."""
    model = full_mode_model(collaboration, num_A, num_B, mode)
    layer = aira_layers(model)[0]
    assert layer.get_delta_weight("default").abs().max() > 1e-3  # the adapter does start non-zero
    torch.testing.assert_close(model(tokens).logits, tiny_llama()(tokens).logits, rtol=0, atol=1e-5)


def principal_part(layer, rank: int) -> torch.Tensor:
    """The top-`rank` activation-weighted principal part of the layer's original weight W = W_res + P0."""
    weight = layer.get_base_layer().weight + layer.residual("default")
    rms = layer.aira_w_in["default"] ** 2  # inps weights are (rms / mean)^½, normalised: rms up to a factor
    u, s, vh = torch.linalg.svd(weight * rms, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank] / rms


@pytest.mark.parametrize("collaboration,num_A,num_B,slices", [("fully", 2, 3, 1), ("heuristic", 2, 3, 2),
                                                               ("learned", 3, 2, 2), ("learned", 2, 3, 2)])
def test_each_pairing_starts_on_its_own_slice(collaboration, num_A, num_B, slices):
    """P0 is the top-(K·r) principal part: K = 1 for fully (rank r by construction), min(M, N) otherwise."""
    layer = aira_layers(full_mode_model(collaboration, num_A, num_B))[0]
    delta = layer.get_delta_weight("default")
    torch.testing.assert_close(delta, layer.residual("default"))
    assert torch.linalg.matrix_rank(delta, rtol=1e-4).item() == slices * 4
    torch.testing.assert_close(delta, principal_part(layer, slices * 4), rtol=1e-3, atol=1e-4)


def test_heuristic_experts_add_rank_in_training():
    """The issue's check: heuristic 2 A x 4 B with AwSVD, trained, changes W by more than rank 2r."""
    batches = make_batches(count=8)
    config = AiraMoeConfig(r=2, num_A=2, num_B=4, collaboration="heuristic", target_modules=["down_proj"],
                           use_awsvd_init=True, awsvd_collect_steps=4)
    model = initialize_aira_moe(tiny_llama(), config, batches, show_progress=False)
    layer = aira_layers(model)[0]
    start = layer.get_delta_weight("default").detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for batch in batches * 3:
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    change = layer.get_delta_weight("default").detach() - start
    rank = torch.linalg.matrix_rank(change, rtol=1e-4).item()
    assert rank > 2 * 2, rank
    assert rank == 4 * 2  # ΔW_final (2r directions) minus P0 (2r others)


def test_merge_unload_and_disable(tokens):
    model = full_mode_model("learned", 3, 2)
    train_a_little(model)
    expected = model(tokens).logits
    with model.disable_adapter():
        torch.testing.assert_close(model(tokens).logits, tiny_llama()(tokens).logits, rtol=0, atol=1e-5)
    originals = {n: p.clone() for n, p in tiny_llama().named_parameters()}
    unloaded = full_mode_model("fully", 2, 3).unload()
    for name, param in unloaded.named_parameters():
        torch.testing.assert_close(param, originals[name], rtol=0, atol=1e-6)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(tokens).logits, expected, rtol=1e-4, atol=1e-5)


RELOAD_CHECK = """
import sys, torch
from peft import PeftModel
from transformers import LlamaForCausalLM
base = LlamaForCausalLM.from_pretrained({base!r}).eval()
model = PeftModel.from_pretrained(base, {adapter!r}).eval()
torch.save(model(torch.load({tokens!r})).logits, {out!r})
loaded = sorted(m for m in sys.modules if m.startswith("aira_moe.") and m.split(".")[1] in ("awsvd", "calibration"))
print("LOADED", loaded)
"""


@pytest.mark.parametrize("collaboration,num_A,num_B", STRATEGIES)
def test_reload_onto_the_original_base_needs_no_calibration_or_svd(collaboration, num_A, num_B, tmp_path, tokens):
    """Invariant 3: the saved residual rebuilds W - P0 on the original base, exactly."""
    model = full_mode_model(collaboration, num_A, num_B)
    train_a_little(model)
    tiny_llama().save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    torch.save(tokens, tmp_path / "tokens.pt")
    output = run_python(RELOAD_CHECK.format(base=str(tmp_path / "base"), adapter=str(tmp_path / "adapter"),
                                            tokens=str(tmp_path / "tokens.pt"), out=str(tmp_path / "out.pt")))
    assert "LOADED []" in output
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), model(tokens).logits, rtol=0, atol=0)


def test_loading_twice_applies_the_residual_once(tmp_path, tokens):
    """Resume loads a checkpoint into an adapter that already holds the same residual."""
    model = full_mode_model("fully", 2, 3)
    train_a_little(model)
    expected = model(tokens).logits
    model.save_pretrained(tmp_path / "adapter")
    model.load_adapter(tmp_path / "adapter", adapter_name="default", is_trainable=True)
    torch.testing.assert_close(model(tokens).logits, expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the saved factors on it, the model on the CPU")
def test_saved_factors_loaded_onto_another_device_rebuild_the_residual(tmp_path, tokens):
    """peft puts a loaded adapter's tensors on the GPU while `aira-moe eval` builds the model on the CPU."""
    from peft import PeftModel

    model = full_mode_model("fully", 2, 3)
    train_a_little(model)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter", torch_device="cuda").cpu().eval()
    torch.testing.assert_close(reloaded(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_export_lora_reproduces_the_adapter_with_stock_peft(tmp_path, tokens):
    """Invariant 6: `aira-moe export-lora` gives a plain LoRA adapter for the original base."""
    model = full_mode_model("learned", 3, 2, mode="outps")
    train_a_little(model)
    tiny_llama().save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    torch.save(tokens, tmp_path / "tokens.pt")
    run_cli(["aira-moe", "export-lora", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"),
             "--output", str(tmp_path / "lora")], cwd=tmp_path)
    output = run_python(
        RELOAD_CHECK.format(base=str(tmp_path / "base"), adapter=str(tmp_path / "lora"),
                            tokens=str(tmp_path / "tokens.pt"), out=str(tmp_path / "lora.pt"))
        + "\nprint('TYPE', model.peft_config['default'].peft_type)",
        env={"AIRA_MOE_DISABLE_HOOK": "1"},
    )
    assert "TYPE PeftType.LORA" in output
    difference = (torch.load(tmp_path / "lora.pt") - model(tokens).logits).abs().max().item()
    assert difference < 1e-4, difference
