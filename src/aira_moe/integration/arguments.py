"""The `aira_moe` options as LLaMA-Factory finetuning arguments, and their validation.

All checks run in `__post_init__`, i.e. while LLaMA-Factory parses the YAML or the CLI flags,
before any model is loaded. YAML values reach the dataclass unconverted, so types are checked
here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from llamafactory.hparams.finetuning_args import FinetuningArguments

from ..tuner.config import (
    ACTIVATION_AWARE_MODES,
    COLLABORATIONS,
    COMPUTE_DTYPES,
    check_choice,
    check_collaboration,
    check_int_at_least,
)

FINETUNING_TYPE = "aira_moe"
THETA_TYPES = ("lod", "uniform")
OBJECTIVE_FUNCTIONS = ("log",)
SUPPORTED_STAGES = ("pt", "sft")
# LoRA-only options of LLaMA-Factory that have no meaning for aira_moe: field -> value meaning "off"
REFUSED_LORA_OPTIONS = {
    "use_dora": False,
    "pissa_init": False,
    "pissa_convert": False,
    "loraplus_lr_ratio": None,
    "use_llama_pro": False,
    "use_galore": False,
    "use_apollo": False,
    "use_badam": False,
}


@dataclass
class AiraMoeArguments:
    """Arguments of the AIRA-MoE method; rank, alpha, dropout and targets reuse LLaMA-Factory's `lora_*`."""

    num_A: int = field(default=2, metadata={"help": "Number of A matrices per adapted layer (documented 2-4)."})
    num_B: int = field(default=3, metadata={"help": "Number of B matrices per adapted layer (documented 3-4)."})
    collaboration: Literal["fully", "heuristic", "learned"] = field(
        default="fully",
        metadata={
            "help": "How the A's and B's combine: `fully` (all pairs, equivalent to one rank-r adapter with "
            "scaled learning rates), `heuristic` (fixed pairing, needs num_A <= num_B) or `learned` (trainable Ω)."
        },
    )
    use_layer_wise_rank: bool = field(
        default=False, metadata={"help": "Allocate ranks per decoder block from outlier statistics (LOD)."}
    )
    rank_budget: Optional[int] = field(
        default=None, metadata={"help": "Sum of the per-block ranks under layer-wise allocation (e.g. 128-256)."}
    )
    theta_type: Literal["lod", "uniform"] = field(
        default="lod", metadata={"help": "Per-block importance: `lod` (outlier fraction) or `uniform` (ablation)."}
    )
    objective_function: Literal["log"] = field(
        default="log", metadata={"help": "Allocation objective: `log` maximises Σ θ_l log r_l."}
    )
    min_rank: int = field(default=2, metadata={"help": "Smallest rank a block may get (documented 2-4)."})
    max_rank: int = field(default=64, metadata={"help": "Largest rank a block may get (documented 32-64)."})
    lod_threshold_M: float = field(
        default=2.0, metadata={"help": "A score counts as an outlier above M x the block mean (documented 1.8-2.5)."}
    )
    use_awsvd_init: bool = field(
        default=False, metadata={"help": "Initialise adapters from the activation-weighted SVD of the weight."}
    )
    awsvd_collect_steps: int = field(
        default=100, metadata={"help": "Training batches used to collect activation statistics (documented 100-200)."}
    )
    use_activation_aware: bool = field(
        default=False, metadata={"help": "Scale adapter channels by static activation weights from calibration."}
    )
    activation_aware_mode: Literal["inps", "outps"] = field(
        default="inps", metadata={"help": "Scale the adapter's input channels (`inps`) or output channels (`outps`)."}
    )
    activation_normalize: bool = field(
        default=True, metadata={"help": "Clip activation weights to [0.1, 10] and rescale them to mean 1."}
    )
    adapter_compute_dtype: Literal["input", "parameter"] = field(
        default="input",
        metadata={
            "help": "Dtype of the adapter's matmuls: `input` (the activations' dtype, bf16 under `bf16: true`, with "
            "fp32 master weights) or `parameter` (fp32, as LLaMA-Factory's LoRA computes)."
        },
    )


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be true or false, got {value!r} ({type(value).__name__}).")


def _check_positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0, got {value!r}.")


def validate_aira_moe_arguments(args: "AiraMoeFinetuningArguments") -> None:
    """Check every aira_moe option; each message names the field, the value and what is allowed."""
    for name in ("num_A", "num_B", "lora_rank", "min_rank", "max_rank", "awsvd_collect_steps"):
        check_int_at_least(name, getattr(args, name), 1)
    for name in ("use_layer_wise_rank", "use_awsvd_init", "use_activation_aware", "activation_normalize", "use_rslora"):
        _check_bool(name, getattr(args, name))
    check_collaboration(args.collaboration, args.num_A, args.num_B)
    check_choice("theta_type", args.theta_type, THETA_TYPES)
    check_choice("objective_function", args.objective_function, OBJECTIVE_FUNCTIONS)
    check_choice("activation_aware_mode", args.activation_aware_mode, ACTIVATION_AWARE_MODES)
    check_choice("adapter_compute_dtype", args.adapter_compute_dtype, COMPUTE_DTYPES)
    _check_positive_number("lod_threshold_M", args.lod_threshold_M)
    if args.min_rank > args.max_rank:
        raise ValueError(f"`min_rank` ({args.min_rank}) must not exceed `max_rank` ({args.max_rank}).")
    if args.rank_budget is not None:
        check_int_at_least("rank_budget", args.rank_budget, 1)
    if args.use_layer_wise_rank and args.rank_budget is None:
        raise ValueError("`use_layer_wise_rank: true` needs `rank_budget` (the sum of per-block ranks, e.g. 128).")
    if isinstance(args.lora_dropout, bool) or not isinstance(args.lora_dropout, (int, float)):
        raise ValueError(f"`lora_dropout` must be a number in [0, 1), got {args.lora_dropout!r}.")
    if not 0 <= args.lora_dropout < 1:
        raise ValueError(f"`lora_dropout` must be in [0, 1), got {args.lora_dropout}.")
    check_choice("stage", args.stage, SUPPORTED_STAGES)
    for name, off in REFUSED_LORA_OPTIONS.items():
        if getattr(args, name, off) != off:
            raise ValueError(
                f"`{name}: {getattr(args, name)!r}` is a LoRA-only option and does not apply to "
                f"finetuning_type aira_moe; remove it."
            )


@dataclass
class AiraMoeFinetuningArguments(FinetuningArguments, AiraMoeArguments):
    """LLaMA-Factory's finetuning arguments with `aira_moe` added to `finetuning_type`."""

    finetuning_type: Literal["lora", "oft", "freeze", "full", "aira_moe"] = field(
        default="lora",
        metadata={"help": "Which fine-tuning method to use (`aira_moe` is added by the aira-moe package)."},
    )

    def __post_init__(self) -> None:
        if self.finetuning_type != FINETUNING_TYPE:
            super().__post_init__()
            return
        validate_aira_moe_arguments(self)
        # The parent normalises the shared `lora_*` fields (comma lists, default alpha) and checks
        # options common to all adapter types; it only knows the built-in types, so it runs as LoRA.
        self.finetuning_type = "lora"
        try:
            super().__post_init__()
        finally:
            self.finetuning_type = FINETUNING_TYPE


__all__ = ["AiraMoeArguments", "AiraMoeFinetuningArguments", "COLLABORATIONS", "FINETUNING_TYPE"]
