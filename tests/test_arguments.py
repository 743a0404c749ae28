"""`aira_moe` options through LLaMA-Factory's own parser: accepted values, and clear errors for bad ones.

Parsing happens before any model is loaded; the model path below does not even exist.
"""

from __future__ import annotations

import pytest
from conftest import tiny_llama_config
from llamafactory.hparams import get_infer_args, get_train_args


def train_args(tmp_path, **overrides):
    args = {
        "model_name_or_path": str(tmp_path / "no-model-needed"),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "aira_moe",
        "dataset": "medmcqa_train",
        "template": "chatml",
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
    }
    args.update(overrides)
    return args


def test_yaml_values_reach_the_arguments(tmp_path):
    *_, finetuning_args, _ = get_train_args(
        train_args(tmp_path, num_A=4, num_B=4, collaboration="learned", lora_rank=16, lora_target="q_proj,v_proj")
    )
    assert finetuning_args.finetuning_type == "aira_moe"
    assert (finetuning_args.num_A, finetuning_args.num_B, finetuning_args.collaboration) == (4, 4, "learned")
    assert finetuning_args.lora_target == ["q_proj", "v_proj"]
    assert finetuning_args.lora_alpha == 32  # LLaMA-Factory's default: 2 x rank


def test_cli_flags_are_parsed_and_converted(tmp_path):
    flags = []
    for key, value in train_args(tmp_path, num_A="3", num_B="4", lod_threshold_M="2.5").items():
        flags += [f"--{key}", str(value)]
    _, _, training_args, finetuning_args, _ = get_train_args(flags)
    assert (finetuning_args.num_A, finetuning_args.num_B, finetuning_args.lod_threshold_M) == (3, 4, 2.5)
    assert training_args.label_names == ["labels"]


def test_inference_parser_knows_aira_moe_adapters(tmp_path):
    model_args, _, finetuning_args, _ = get_infer_args(
        {"model_name_or_path": "m", "adapter_name_or_path": "a", "finetuning_type": "aira_moe", "template": "chatml"}
    )
    assert finetuning_args.finetuning_type == "aira_moe" and model_args.adapter_name_or_path == ["a"]


def test_other_finetuning_types_are_untouched(tmp_path):
    *_, finetuning_args, _ = get_train_args(train_args(tmp_path, finetuning_type="lora", use_dora=True))
    assert finetuning_args.finetuning_type == "lora" and finetuning_args.use_dora


BAD_INPUT = [
    ({"num_A": 0}, ValueError, r"`num_A` must be an integer >= 1, got 0"),
    ({"num_B": -2}, ValueError, r"`num_B` must be an integer >= 1, got -2"),
    ({"num_A": "two"}, ValueError, r"`num_A` must be an integer >= 1, got 'two' \(str\)"),
    ({"num_B": 2.5}, ValueError, r"`num_B` must be an integer >= 1, got 2.5 \(float\)"),
    ({"lora_rank": 0}, ValueError, r"`lora_rank` must be an integer >= 1, got 0"),
    ({"collaboration": "sparse"}, ValueError, r"`collaboration` must be one of fully, heuristic, learned; got 'sparse'"),
    ({"collaboration": "heuristic", "num_A": 4, "num_B": 3}, ValueError, r"num_A <= num_B.*num_A=4, num_B=3"),
    ({"theta_type": "owl"}, ValueError, r"`theta_type` must be one of lod, uniform; got 'owl'"),
    ({"objective_function": "linear"}, ValueError, r"`objective_function` must be one of log; got 'linear'"),
    ({"activation_aware_mode": "both"}, ValueError, r"`activation_aware_mode` must be one of inps, outps; got 'both'"),
    ({"adapter_compute_dtype": "bf16"}, ValueError, r"`adapter_compute_dtype` must be one of input, parameter; got 'bf16'"),
    ({"min_rank": 0}, ValueError, r"`min_rank` must be an integer >= 1, got 0"),
    ({"min_rank": 8, "max_rank": 4}, ValueError, r"`min_rank` \(8\) must not exceed `max_rank` \(4\)"),
    ({"lod_threshold_M": 0}, ValueError, r"`lod_threshold_M` must be a number > 0, got 0"),
    ({"awsvd_lr_ratio": -0.25}, ValueError, r"`awsvd_lr_ratio` must be a number > 0, got -0.25"),
    ({"awsvd_collect_steps": 0}, ValueError, r"`awsvd_collect_steps` must be an integer >= 1, got 0"),
    ({"use_awsvd_init": "yes"}, ValueError, r"`use_awsvd_init` must be true or false, got 'yes'"),
    ({"lora_dropout": 1.5}, ValueError, r"`lora_dropout` must be a number in \[0, 1\), got 1.5"),
    ({"rank_budget": 0}, ValueError, r"`rank_budget` must be an integer >= 1, got 0"),
    ({"use_layer_wise_rank": True}, ValueError, r"needs `rank_budget`"),
    ({"use_dora": True}, ValueError, r"`use_dora: True` is a LoRA-only option"),
    ({"pissa_init": True}, ValueError, r"`pissa_init: True` is a LoRA-only option"),
    ({"loraplus_lr_ratio": 16.0}, ValueError, r"`loraplus_lr_ratio: 16.0` is a LoRA-only option"),
    ({"stage": "ppo", "reward_model": "r"}, ValueError, r"`stage` must be one of pt, sft, rm, dpo, kto with finetuning_type aira_moe; got .ppo."),
    ({"quantization_bit": 4, "quantization_method": "hqq"}, ValueError, r"`quantization_method: hqq` replaces the linear layers aira_moe adapts .*allowed with finetuning_type aira_moe: bnb"),
    ({"use_unsloth": True}, ValueError, r"`use_unsloth: True` is not supported with finetuning_type aira_moe"),
    ({"flash_attn": "fa2"}, ValueError, r"`flash_attn: fa2` crashes under transformers 5.6.0 .*use `flash_attn: sdpa`"),
]


@pytest.mark.parametrize("overrides,error,message", BAD_INPUT, ids=[str(case[0]) for case in BAD_INPUT])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        get_train_args(train_args(tmp_path, **overrides))


@pytest.mark.parametrize(
    "budget,min_rank,max_rank,message",
    [(40, 12, 64, r"`rank_budget` 40 is infeasible: 4 layers x min_rank 12 = 48 > 40"),
     (300, 2, 64, r"`rank_budget` 300 is infeasible: 4 layers x max_rank 64 = 256 < 300")],
)
def test_infeasible_budget_is_refused_from_the_config_alone(tmp_path, budget, min_rank, max_rank, message):
    """Only config.json exists: the check needs the layer count, never the weights."""
    tiny_llama_config(num_hidden_layers=4).save_pretrained(tmp_path / "config-only")
    args = train_args(tmp_path, model_name_or_path=str(tmp_path / "config-only"), use_layer_wise_rank=True,
                      rank_budget=budget, min_rank=min_rank, max_rank=max_rank)
    with pytest.raises(ValueError, match=message):
        get_train_args(args)


def test_feasible_budget_passes(tmp_path):
    tiny_llama_config(num_hidden_layers=4).save_pretrained(tmp_path / "config-only")
    args = train_args(tmp_path, model_name_or_path=str(tmp_path / "config-only"), use_layer_wise_rank=True,
                      rank_budget=64, use_activation_aware=True, activation_aware_mode="outps")
    *_, finetuning_args, _ = get_train_args(args)
    assert finetuning_args.rank_budget == 64 and finetuning_args.activation_aware_mode == "outps"


def test_unknown_option_is_refused(tmp_path):
    with pytest.raises(ValueError, match="num_C"):
        get_train_args(train_args(tmp_path, num_C=2))


@pytest.mark.parametrize(
    "overrides,message",
    [({"lora_rank": 12, "collaboration": "heuristic", "num_B": 4},
      r"`lora_rank` 12 is too large for use_awsvd_init: model.layers.0.self_attn.k_proj \(16 x 32\) .*needs 2 x rank = 24; "
      r"allowed: lora_rank <= 8"),
     ({"lora_rank": 20}, r"`lora_rank` 20 is too large .* needs 1 x rank = 20; allowed: lora_rank <= 16"),
     ({"use_layer_wise_rank": True, "rank_budget": 40, "min_rank": 2, "max_rank": 20, "collaboration": "learned"},
      r"`max_rank` 20 is too large .*allowed: max_rank <= 8")],
)
def test_awsvd_rank_above_a_layers_smaller_dimension_is_refused_at_parse_time(tmp_path, overrides, message):
    """The tiny config's k_proj is 16 x 32: K·r must fit in 16 (K = 1 for fully, min(M, N) otherwise)."""
    tiny_llama_config(num_hidden_layers=4).save_pretrained(tmp_path / "config-only")
    args = train_args(tmp_path, model_name_or_path=str(tmp_path / "config-only"), use_awsvd_init=True, **overrides)
    with pytest.raises(ValueError, match=message):
        get_train_args(args)


def test_awsvd_rank_that_fits_passes(tmp_path):
    tiny_llama_config(num_hidden_layers=4).save_pretrained(tmp_path / "config-only")
    args = train_args(tmp_path, model_name_or_path=str(tmp_path / "config-only"), use_awsvd_init=True, lora_rank=8,
                      collaboration="heuristic", num_B=4)
    assert get_train_args(args)[3].use_awsvd_init


def test_an_adapter_of_another_peft_type_is_refused(tmp_path):
    """An existing LoRA adapter must not silently keep training as LoRA under finetuning_type aira_moe."""
    from peft import LoraConfig

    LoraConfig(r=4, target_modules=["q_proj"]).save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match=r"`adapter_name_or_path`: .*lora holds a LORA adapter.*finetuning_type: lora"):
        get_train_args(train_args(tmp_path, adapter_name_or_path=str(tmp_path / "lora")))


@pytest.mark.parametrize("content,message", [("{not json", r"cannot read .*adapter_config.json \(JSONDecodeError"),
                                             (None, r"has no adapter_config.json")])
def test_an_unreadable_adapter_config_names_the_file(tmp_path, content, message):
    (tmp_path / "adapter").mkdir()
    if content is not None:
        (tmp_path / "adapter" / "adapter_config.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        get_infer_args({"model_name_or_path": "m", "adapter_name_or_path": str(tmp_path / "adapter"),
                        "finetuning_type": "aira_moe", "template": "chatml"})


def test_the_arguments_are_derived_from_the_config():
    """One declaration per option: every LLaMA-Factory option of ours has the config field's default and help."""
    from dataclasses import fields

    from aira_moe import AiraMoeConfig
    from aira_moe.integration.arguments import AiraMoeFinetuningArguments

    ours = {f.name: f for f in fields(AiraMoeConfig) if f.metadata.get("argument")}
    theirs = {f.name: f for f in fields(AiraMoeFinetuningArguments)}
    assert len(ours) == 18
    for name, declared in ours.items():
        assert theirs[name].default == declared.default and theirs[name].metadata["help"] == declared.metadata["help"]
