"""Per-bank learning rates: `fully` at the user's rate trains exactly as a rank-r LoRA; the CLI uses them."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from peft import get_peft_model

from aira_moe import AiraMoeConfig
from aira_moe.optimizer import optimizer_parameter_groups, parameter_factors
from aira_moe.tuner.layer import AiraMoeLayer


def adapted(collaboration: str, num_A: int = 2, num_B: int = 3, **options):
    config = AiraMoeConfig(r=2, num_A=num_A, num_B=num_B, collaboration=collaboration, target_modules=["q_proj"],
                           init_weights=False, **options)
    return get_peft_model(tiny_llama(), config)


def bank_factors(model) -> dict[str, set[float]]:
    factors: dict[str, set[float]] = {}
    for name, factor in parameter_factors(model).items():
        factors.setdefault(name.split(".")[-2], set()).add(round(factor, 6))
    return factors


@pytest.mark.parametrize(("collaboration", "num_A", "num_B", "expected_A", "expected_B"), [
    ("fully", 2, 3, 1 / 2, 1 / 3),  # every A_i (B_j) gets the same gradient
    ("heuristic", 2, 4, 1.0, 1 / 2),  # A_i independent; its two B's share one gradient
])
def test_bank_factors_count_the_experts_that_share_a_gradient(collaboration, num_A, num_B, expected_A, expected_B):
    factors = bank_factors(adapted(collaboration, num_A, num_B))
    assert factors["aira_A"] == {round(expected_A, 6)} and factors["aira_B"] == {round(expected_B, 6)}


def test_learned_starts_close_to_fully_and_its_omega_keeps_the_rate():
    factors = bank_factors(adapted("learned"))
    (factor_A,), (factor_B,) = factors["aira_A"], factors["aira_B"]
    assert 1 / 2 < factor_A < 0.6 and 1 / 3 < factor_B < 0.4
    groups = optimizer_parameter_groups(adapted("learned"), 1e-3)
    omega_rates = {group["lr"] for group in groups for p in group["params"] if p.shape == (3, 2)}
    assert omega_rates == {1e-3}


def layer_of(model) -> AiraMoeLayer:
    return next(m for m in model.modules() if isinstance(m, AiraMoeLayer))


def test_fully_at_the_users_rate_follows_rank_r_lora_step_for_step():
    """Adam on the banks (rates / num_A, / num_B) and Adam on one LoRA pair (A = Σ A_i, B = Σ B_j) at the same rate."""
    torch.manual_seed(0)
    layer = layer_of(adapted("fully"))
    A, B = layer.aira_A["default"], layer.aira_B["default"]
    lora_A = A.detach().view(2, 2, -1).sum(0).clone().requires_grad_()
    lora_B = B.detach().view(B.shape[0], 3, 2).sum(1).clone().requires_grad_()
    lr = 1e-2
    banks = torch.optim.Adam([{"params": [A], "lr": lr / 2}, {"params": [B], "lr": lr / 3}])
    lora = torch.optim.Adam([lora_A, lora_B], lr=lr)
    x, target = torch.randn(16, A.shape[1]), torch.randn(16, B.shape[0])
    scaling = layer.scaling["default"]
    for _ in range(25):
        for optimizer, delta in ((banks, lambda: layer.get_delta_weight("default")), (lora, lambda: scaling * lora_B @ lora_A)):
            optimizer.zero_grad()
            ((x @ delta().T - target) ** 2).mean().backward()
            optimizer.step()
    torch.testing.assert_close(layer.get_delta_weight("default"), scaling * lora_B @ lora_A, rtol=1e-4, atol=1e-6)


def test_the_llamafactory_optimizer_has_the_bank_rates_unless_switched_off():
    import llamafactory.train.trainer_utils as trainer_utils
    from transformers import TrainingArguments

    from aira_moe.integration.arguments import AiraMoeFinetuningArguments

    model = adapted("fully")
    args = TrainingArguments(output_dir="unused", learning_rate=6e-3, weight_decay=0.0, report_to="none", use_cpu=True)
    optimizer = trainer_utils.create_custom_optimizer(model, args, AiraMoeFinetuningArguments(finetuning_type="aira_moe"))
    assert sorted(group["lr"] for group in optimizer.param_groups) == pytest.approx([2e-3, 3e-3])
    off = AiraMoeFinetuningArguments(finetuning_type="aira_moe", bank_lr_scaling=False)
    assert trainer_utils.create_custom_optimizer(model, args, off) is None  # the Trainer's own optimizer, one rate


def test_resuming_needs_the_checkpoints_bank_rates(tmp_path):
    """A checkpoint from before `bank_lr_scaling` (no such key) resumes only with it off, checked before any loading."""
    from types import SimpleNamespace

    from llamafactory.train.sft import run_sft

    from aira_moe.errors import AiraMoeError
    from aira_moe.integration.checks import check_resume

    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "adapter_config.json").write_text('{"peft_type": "AIRA_MOE", "r": 2}')
    check_resume(str(checkpoint), SimpleNamespace(bank_lr_scaling=False, awsvd_lr_ratio=0.25))
    training = SimpleNamespace(resume_from_checkpoint=str(checkpoint), deepspeed=None)
    finetuning = SimpleNamespace(finetuning_type="aira_moe", bank_lr_scaling=True)
    with pytest.raises(AiraMoeError, match="trained with bank_lr_scaling: false; set `bank_lr_scaling: false`"):
        run_sft(None, None, training, finetuning)


def test_a_trained_omega_keeps_the_groups_a_resumed_optimizer_expects():
    """The factors come from Ω's start: a trained Ω (different in every layer) must not split or move the groups."""
    model = adapted("learned")
    before = [(group["lr"], len(group["params"])) for group in optimizer_parameter_groups(model, 1e-3)]
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "aira_omega" in name:
                parameter.add_(torch.rand_like(parameter))
    assert [(group["lr"], len(group["params"])) for group in optimizer_parameter_groups(model, 1e-3)] == before


def test_every_option_has_its_chinese_label_in_the_web_ui():
    from aira_moe.integration.arguments import OUR_OPTIONS
    from aira_moe.integration.webui import locales

    entries = locales()
    assert all(entries[name]["zh"]["label"] for name in OUR_OPTIONS)


def test_an_awsvd_start_scales_every_bank_by_its_ratio():
    """At rate L with `awsvd_lr_ratio` 0.25 each group trains at what L / 4 gives it without: Ω included."""
    for collaboration in ("fully", "learned"):
        started = optimizer_parameter_groups(adapted(collaboration, use_awsvd_init=True), 4e-3)
        plain = optimizer_parameter_groups(adapted(collaboration, use_awsvd_init=True, awsvd_lr_ratio=1.0), 1e-3)
        assert [len(g["params"]) for g in started] == [len(g["params"]) for g in plain]
        assert [g["lr"] for g in started] == pytest.approx([g["lr"] for g in plain])
    without = optimizer_parameter_groups(adapted("fully"), 4e-3)
    assert sorted(g["lr"] for g in without) == pytest.approx([4e-3 / 3, 4e-3 / 2])  # no AwSVD start, no ratio


def test_an_awsvd_checkpoint_from_before_the_ratio_resumes_only_without_it(tmp_path):
    """Its banks trained at the plain per-bank rates (ratio 1): the default 0.25 would quarter every later step."""
    from types import SimpleNamespace

    from aira_moe.errors import AiraMoeError
    from aira_moe.integration.checks import check_resume

    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    (checkpoint / "adapter_config.json").write_text(
        '{"peft_type": "AIRA_MOE", "r": 2, "bank_lr_scaling": true, "use_awsvd_init": true}'
    )
    with pytest.raises(AiraMoeError, match=r"`awsvd_lr_ratio: 0.25` cannot resume .* set `awsvd_lr_ratio: 1.0`"):
        check_resume(str(checkpoint), SimpleNamespace(bank_lr_scaling=True, awsvd_lr_ratio=0.25))
    check_resume(str(checkpoint), SimpleNamespace(bank_lr_scaling=True, awsvd_lr_ratio=1.0))
