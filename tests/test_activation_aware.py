"""Activation-aware weighting (docs/method.md §5): the weights, and invariants 1-3 with them switched on."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from test_calibration import make_batches
from test_layer import aira_layers, reference_delta
from test_save_load import reload_logits

from aira_moe import AiraMoeConfig, initialize_aira_moe
from aira_moe.techniques.activation_aware import activation_weights


def test_weights_follow_the_formula():
    rms = torch.tensor([1.0, 4.0, 0.0, 3.0])  # mean 2
    torch.testing.assert_close(activation_weights(rms, normalize=False), (rms / 2).sqrt())


def test_normalized_weights_are_clipped_and_have_mean_one():
    rms = torch.tensor([1e-6, 1.0, 1.0, 1e4])
    weights = activation_weights(rms, normalize=True)
    assert weights.mean().item() == pytest.approx(1.0)
    raw = (rms / rms.mean()).sqrt().clamp(0.1, 10)
    torch.testing.assert_close(weights, raw / raw.mean())
    assert torch.isfinite(activation_weights(torch.zeros(3), normalize=True)).all()


def weighted_model(mode: str, init_weights: bool, normalize: bool = True):
    """A tiny model with calibrated activation weights in `mode` ('inps' or 'outps')."""
    config = AiraMoeConfig(r=4, num_A=2, num_B=3, collaboration="learned", target_modules="all-linear",
                           use_activation_aware=True, activation_aware_mode=mode, activation_normalize=normalize,
                           init_weights=init_weights, awsvd_collect_steps=2)
    model = initialize_aira_moe(tiny_llama(), config, make_batches(count=2), show_progress=False).eval()
    assert len(model.state_dict()) and sum(n.endswith(f"aira_w_{mode[:-2]}.default") for n in model.state_dict()) == 14
    return model


@pytest.mark.parametrize("mode", ["inps", "outps"])
def test_init_still_reproduces_the_base_model(mode, tokens):
    torch.testing.assert_close(weighted_model(mode, True)(tokens).logits, tiny_llama()(tokens).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["inps", "outps"])
def test_forward_equals_weighted_reference_and_merge(mode, tokens):
    model = weighted_model(mode, False, normalize=False)
    layer = aira_layers(model)[0]
    w_in = layer.aira_w_in["default"] if mode == "inps" else torch.ones(layer.in_features)
    w_out = layer.aira_w_out["default"] if mode == "outps" else torch.ones(layer.out_features)
    active = w_in if mode == "inps" else w_out
    assert not torch.allclose(active, torch.ones_like(active))  # the weighting is really exercised
    x = torch.randn(2, 3, layer.in_features)
    torch.testing.assert_close(layer.adapter_output(x, "default"), w_out * reference_delta(layer, x * w_in),
                               rtol=1e-5, atol=1e-6)
    expected = model(tokens).logits
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(tokens).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["inps", "outps"])
def test_weights_are_saved_and_reloaded(mode, tmp_path, tokens):
    model = weighted_model(mode, False)
    tiny_llama().save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    torch.save(tokens, tmp_path / "tokens.pt")
    torch.testing.assert_close(reload_logits(tmp_path), model(tokens).logits, rtol=0, atol=0)
