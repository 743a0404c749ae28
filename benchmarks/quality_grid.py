"""The quality study's grid: its domains (train / held-out datasets) and its methods at equal parameters.

Read by `quality_study.py` (which runs them) and `quality_report.py` (which tables them).
"""

from __future__ import annotations

DOMAINS = {
    "gsm8k": ("gsm8k_train", "gsm8k_test"),
    "fineval": ("fineval_en_train", "fineval_en_test"),
    "medicine": ("genmedgpt_train", "genmedgpt_test"),
    "law": ("lawbench_train", "lawbench_test"),
    # the four training sets concatenated; held-out loss on each test set (and their mean as `eval_loss`)
    "mixture": ("gsm8k_train,fineval_en_train,genmedgpt_train,lawbench_train",
                "gsm8k_test,fineval_en_test,genmedgpt_test,lawbench_test"),
}
# `aira-moe eval` tasks scored per domain with --score (the task scores beside held-out loss)
SCORE_TASKS = {"gsm8k": ("gsm8k_mc", "gsm8k"), "fineval": ("fineval",), "medicine": ("medicine",), "law": ("lawbench",),
               "mixture": ("gsm8k_mc", "gsm8k", "fineval", "medicine", "lawbench")}
# Equal trainable parameters on SmolLM2-135M (all 7 linear layers of 30 blocks): LoRA r=10 has
# 10 * sum(d_in + d_out) = 101,760 per block; aira_moe 2 A x 3 B at r=4 has 8 * sum(d_in) +
# 12 * sum(d_out) = 102,144. `lora_cola_lr` is the rank-4 LoRA that `fully` provably equals, with
# A and B learning rates x2 and x3 (docs/method.md §1): lr x2 and LoRA+ ratio 1.5.
# The aira_moe methods run their matmuls in fp32 as the LoRA baselines do (and as the first runs of
# this study did, before bf16 became the default); `aira_basic_bf16` checks that bf16 changes nothing.
# Second round (docs/results.md): the aira_moe methods train with per-bank learning rates (`bank_lr_scaling`,
# the default since), so that they share LoRA's rates; `*_unscaled` switch it off, as every first-round run was.
# The ablations add one technique at a time to basic (`aira_standard` is basic + activation weights).
# The AwSVD rows keep `awsvd_lr_ratio: 1.0`, as every run of the round before the option had, so that their grids
# mean the same across sessions; `*_corrected` has the default ratio (0.25), to be run at LoRA's best rates.
AIRA = {"finetuning_type": "aira_moe", "bank_lr_scaling": True, "lora_rank": 4, "lora_alpha": 8, "num_A": 2, "num_B": 3, "collaboration": "fully",
        "adapter_compute_dtype": "parameter"}
WEIGHTS = {"use_activation_aware": True, "activation_aware_mode": "inps"}
# LOD's `rank_budget` is not fixed here: quality_study sets it to lora_rank x the model's blocks (SmolLM2's 30: 120;
# Gemma-3-270M's 18: 72), so that full mode has the other methods' parameters on either model.
LOD = {"use_layer_wise_rank": True, "min_rank": 2, "max_rank": 8, "awsvd_collect_steps": 50}
AWSVD = {"use_awsvd_init": True, "awsvd_collect_steps": 50, "awsvd_lr_ratio": 1.0}
FULL = {**WEIGHTS, **LOD, **AWSVD}
UNSCALED = {"bank_lr_scaling": False}
METHODS: dict[str, tuple[dict, float]] = {  # settings, learning-rate multiplier
    "lora": ({"finetuning_type": "lora", "lora_rank": 10, "lora_alpha": 20}, 1.0),
    "pissa": ({"finetuning_type": "lora", "lora_rank": 10, "lora_alpha": 20, "pissa_init": True, "pissa_iter": 16,
               "pissa_convert": True}, 1.0),
    "lora_cola_lr": ({"finetuning_type": "lora", "lora_rank": 4, "lora_alpha": 8, "loraplus_lr_ratio": 1.5}, 2.0),
    "aira_basic": (AIRA, 1.0),
    "aira_standard": ({**AIRA, **WEIGHTS}, 1.0),
    "aira_basic_lod": ({**AIRA, **LOD}, 1.0),
    "aira_basic_awsvd": ({**AIRA, **AWSVD}, 1.0),
    "aira_full": ({**AIRA, **FULL}, 1.0),
    "aira_full_heuristic": ({**AIRA, **FULL, "collaboration": "heuristic"}, 1.0),
    "aira_full_learned": ({**AIRA, **FULL, "collaboration": "learned"}, 1.0),
    "aira_full_learned_corrected": ({**AIRA, **FULL, "collaboration": "learned", "awsvd_lr_ratio": 0.25}, 1.0),
    "aira_basic_unscaled": ({**AIRA, **UNSCALED}, 1.0),
    "aira_full_unscaled": ({**AIRA, **FULL, **UNSCALED}, 1.0),
    "aira_basic_bf16": ({**AIRA, "adapter_compute_dtype": "input"}, 1.0),
}
