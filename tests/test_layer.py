"""The AIRA-MoE layer against docs/method.md §1 and invariants 1, 2 and 5."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from peft import get_peft_model

from aira_moe import AiraMoeConfig
from aira_moe.tuner import AiraMoeLayer
from aira_moe.tuner.layer import collaboration_matrix

STRATEGIES = [("fully", 2, 3), ("heuristic", 2, 3), ("learned", 2, 3), ("fully", 4, 4), ("learned", 3, 2)]


def adapted(collaboration: str, num_A: int, num_B: int, init_weights: bool = True, **kwargs):
    config = AiraMoeConfig(
        r=4,
        lora_alpha=8,
        num_A=num_A,
        num_B=num_B,
        collaboration=collaboration,
        target_modules="all-linear",
        init_weights=init_weights,
        **kwargs,
    )
    return get_peft_model(tiny_llama(), config)


def aira_layers(model) -> list[AiraMoeLayer]:
    return [m for m in model.modules() if isinstance(m, AiraMoeLayer)]


def reference_delta(layer: AiraMoeLayer, x: torch.Tensor, name: str = "default") -> torch.Tensor:
    """The slow definition: s · Σ_j Σ_i Ω_ji B_j A_i x, one (i, j) pair at a time."""
    r, M, N = layer.r[name], layer.num_A[name], layer.num_B[name]
    A, B, omega = layer.aira_A[name], layer.aira_B[name], layer.omega(name)
    out = torch.zeros(*x.shape[:-1], layer.out_features)
    for j in range(N):
        for i in range(M):
            out += omega[j, i] * (x @ A[i * r : (i + 1) * r].T) @ B[:, j * r : (j + 1) * r].T
    return layer.scaling[name] * out


@pytest.mark.parametrize("collaboration,num_A,num_B", STRATEGIES)
def test_init_reproduces_base_model(collaboration, num_A, num_B, tokens):
    """Invariant 1: right after creation the adapted model computes the base model's function."""
    base_logits = tiny_llama()(tokens).logits
    model = adapted(collaboration, num_A, num_B)
    torch.testing.assert_close(model(tokens).logits, base_logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("collaboration,num_A,num_B", STRATEGIES)
def test_stacked_forward_equals_pairwise_loop(collaboration, num_A, num_B):
    """Invariant 5: two GEMMs and the r-space mix equal the double loop over (i, j), alone and as the
    forward adds them to the base output."""
    model = adapted(collaboration, num_A, num_B, init_weights=False)
    x = torch.randn(3, 5, 32)
    for layer in aira_layers(model):
        if layer.in_features != 32:
            continue
        expected = reference_delta(layer, x)
        torch.testing.assert_close(layer.adapter_output(x, "default"), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("collaboration,num_A,num_B", STRATEGIES)
def test_merge_and_unmerge(collaboration, num_A, num_B, tokens):
    """Invariant 2: merged logits equal the adapter model's; unmerging restores the base weights."""
    model = adapted(collaboration, num_A, num_B, init_weights=False)
    before = {n: p.clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    expected = model(tokens).logits
    model.merge_adapter()
    torch.testing.assert_close(model(tokens).logits, expected, rtol=1e-4, atol=1e-5)
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in before:
            torch.testing.assert_close(param, before[name], rtol=0, atol=1e-6)
    merged = model.merge_and_unload()
    assert not aira_layers(merged)
    torch.testing.assert_close(merged(tokens).logits, expected, rtol=1e-4, atol=1e-5)


def test_delta_weight_matches_its_definition():
    model = adapted("learned", 3, 4, init_weights=False)
    layer = aira_layers(model)[0]
    x = torch.eye(layer.in_features)
    torch.testing.assert_close(layer.get_delta_weight("default"), reference_delta(layer, x).T, rtol=1e-5, atol=1e-6)


def test_heuristic_pairing():
    """A_i owns ⌊N/M⌋ consecutive B's; the leftover B's go to A_1, A_2, … in order."""
    expected = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=torch.float32)
    torch.testing.assert_close(collaboration_matrix("heuristic", 2, 5), expected)
    torch.testing.assert_close(collaboration_matrix("heuristic", 3, 3), torch.eye(3))
    assert collaboration_matrix("fully", 2, 3).eq(1).all()


def test_learned_mix_starts_non_symmetric():
    omega = collaboration_matrix("learned", 3, 4)
    assert len({tuple(row.tolist()) for row in omega}) == 4
    assert len({tuple(col.tolist()) for col in omega.T}) == 3


def test_fully_is_one_rank_r_adapter():
    """docs/method.md §1: with `fully`, ΔW = s (Σ_j B_j)(Σ_i A_i): rank <= r, and every A_i gets the same gradient."""
    model = adapted("fully", 3, 4, init_weights=False)
    layer = aira_layers(model)[0]
    r = layer.r["default"]
    A, B = layer.aira_A["default"], layer.aira_B["default"]
    sum_A = A.view(3, r, -1).sum(0)
    sum_B = B.view(B.shape[0], 4, r).sum(1)
    delta = layer.get_delta_weight("default")
    torch.testing.assert_close(delta, layer.scaling["default"] * sum_B @ sum_A, rtol=1e-5, atol=1e-6)
    assert torch.linalg.matrix_rank(delta) <= r
    layer.adapter_output(torch.randn(4, layer.in_features), "default").pow(2).sum().backward()
    grads = A.grad.view(3, r, -1)
    for i in range(1, 3):
        torch.testing.assert_close(grads[i], grads[0])


def test_learned_experts_diverge_and_add_rank():
    """Under `learned` every A_i and every B_j ends up different and ΔW's rank exceeds r."""
    torch.manual_seed(0)
    model = adapted("learned", 2, 3)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        batch = torch.randint(0, 128, (4, 12))
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    layer = aira_layers(model)[0]
    r = layer.r["default"]
    A_experts = layer.aira_A["default"].detach().view(2, r, -1)
    B_experts = layer.aira_B["default"].detach().view(layer.out_features, 3, r)
    assert not torch.allclose(A_experts[0], A_experts[1])
    for j, k in [(0, 1), (0, 2), (1, 2)]:
        assert not torch.allclose(B_experts[:, j], B_experts[:, k])
    assert layer.aira_omega["default"].requires_grad
    assert torch.linalg.matrix_rank(layer.get_delta_weight("default")) > r


@pytest.mark.parametrize("collaboration", ["fully", "heuristic"])
def test_fixed_mix_is_not_trainable(collaboration):
    model = adapted(collaboration, 2, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("aira_A" in n or "aira_B" in n for n in trainable)


def test_dropout_only_in_training(tokens):
    model = adapted("fully", 2, 3, init_weights=False, lora_dropout=0.5)
    model.eval()
    torch.testing.assert_close(model(tokens).logits, model(tokens).logits)
    model.train()
    assert not torch.allclose(model(tokens).logits, model(tokens).logits)


def test_several_named_adapters(tokens):
    model = adapted("fully", 2, 3, init_weights=False)
    model.add_adapter("second", AiraMoeConfig(r=2, num_A=3, num_B=3, collaboration="heuristic",
                                              target_modules=["q_proj"], init_weights=False))
    first = model(tokens).logits
    model.set_adapter("second")
    second = model(tokens).logits
    assert not torch.allclose(first, second)
    with model.disable_adapter():
        base = model(tokens).logits
    torch.testing.assert_close(base, tiny_llama()(tokens).logits)
    model.set_adapter("default")
    model.delete_adapter("second")
    torch.testing.assert_close(model(tokens).logits, first)


def test_rank_pattern_sets_per_module_ranks():
    model = adapted("fully", 2, 3, rank_pattern={"model.layers.1.self_attn.q_proj": 6})
    ranks = {name: m.r["default"] for name, m in model.named_modules() if isinstance(m, AiraMoeLayer)}
    assert ranks["base_model.model.model.layers.1.self_attn.q_proj"] == 6
    assert ranks["base_model.model.model.layers.0.self_attn.q_proj"] == 4


def test_non_linear_target_is_refused():
    with pytest.raises(TypeError, match="embed_tokens.*Embedding"):
        get_peft_model(tiny_llama(), AiraMoeConfig(target_modules=["embed_tokens"]))


@pytest.mark.parametrize("compute_dtype,matmul_dtype", [("input", torch.bfloat16), ("parameter", torch.float32)])
def test_adapter_compute_dtype_on_a_bf16_model_with_fp32_masters(compute_dtype, matmul_dtype, monkeypatch):
    """LLaMA-Factory's mixed setting: bf16 base and activations, fp32 trainable weights.

    `input` runs the adapter's matmuls in bf16 yet keeps fp32 weights and fp32 gradients on them;
    both settings compute the same update up to bf16 rounding.
    """
    model = adapted("fully", 2, 3, init_weights=False, adapter_compute_dtype=compute_dtype)
    layer = next(m for m in aira_layers(model) if m.in_features == 32)
    layer.get_base_layer().to(torch.bfloat16)
    x = torch.randn(3, 5, 32, dtype=torch.bfloat16)
    linear, operand_dtypes = torch.nn.functional.linear, set()

    def recording_linear(inp, weight, *args):
        operand_dtypes.add((inp.dtype, weight.dtype))
        return linear(inp, weight, *args)

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    out = layer.adapter_output(x, "default")
    assert operand_dtypes == {(matmul_dtype, matmul_dtype)}
    out.float().sum().backward()
    A = layer.aira_A["default"]
    assert A.dtype == torch.float32 and A.grad is not None and A.grad.dtype == torch.float32
    expected = reference_delta(layer, x.float()).detach()
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
    with torch.no_grad():  # the forward adds it to the bf16 base output and keeps that dtype
        result = layer(x)
        base = layer.get_base_layer()(x)
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result.float(), base.float() + expected, rtol=0.05, atol=0.05)
