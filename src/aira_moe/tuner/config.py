"""`AiraMoeConfig`: everything needed to rebuild an AIRA-MoE adapter's shapes without data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType

from .registration import PEFT_TYPE, add_peft_type

add_peft_type()

COLLABORATIONS = ("fully", "heuristic", "learned")
ACTIVATION_AWARE_MODES = ("inps", "outps")
COMPUTE_DTYPES = ("input", "parameter")

Collaboration = Literal["fully", "heuristic", "learned"]


def check_int_at_least(name: str, value: object, minimum: int) -> None:
    """Raise a ValueError naming the field unless `value` is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value}.")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError naming the field unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(allowed)}; got {value!r}.")


def check_collaboration(collaboration: object, num_A: int, num_B: int) -> None:
    """`heuristic` hands each A a block of B's, so it needs at least as many B's as A's."""
    check_choice("collaboration", collaboration, COLLABORATIONS)
    if collaboration == "heuristic" and num_A > num_B:
        raise ValueError(
            f"`collaboration: heuristic` needs num_A <= num_B (each A owns at least one B); "
            f"got num_A={num_A}, num_B={num_B}. Use `fully` or `learned`, or raise num_B."
        )


@dataclass
class AiraMoeConfig(PeftConfig):
    """Configuration of an AIRA-MoE adapter (SPEC section 1).

    Per-module ranks (`rank_pattern`) are stored here so that a layer-wise-rank adapter reloads
    with the right shapes and no calibration. The activation weights themselves are buffers in
    the adapter's state dict, not config entries.
    """

    r: int = field(default=8, metadata={"help": "Rank of every A_i / B_j unless `rank_pattern` says otherwise."})
    lora_alpha: float = field(default=16, metadata={"help": "Scaling numerator: s = lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    use_rslora: bool = field(default=False, metadata={"help": "Use s = lora_alpha / sqrt(r)."})
    num_A: int = field(default=2, metadata={"help": "Number of A matrices (experts on the input side)."})
    num_B: int = field(default=3, metadata={"help": "Number of B matrices (experts on the output side)."})
    collaboration: Collaboration = field(
        default="fully", metadata={"help": "How A's and B's combine: fully, heuristic or learned (SPEC 1)."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (or a regex) to adapt; 'all-linear' for every linear layer."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (or a regex) never to adapt."}
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "Module name (or regex) -> rank, overriding `r`; written by layer-wise rank allocation."},
    )
    use_activation_aware: bool = field(
        default=False, metadata={"help": "Layers carry static per-channel activation weights (SPEC 5)."}
    )
    activation_aware_mode: str = field(
        default="inps", metadata={"help": "Which side the activation weights scale: inps or outps."}
    )
    use_awsvd_init: bool = field(
        default=False,
        metadata={"help": "Layers carry an AwSVD residual P0 (subtracted from W), saved with the adapter (SPEC 4)."},
    )
    adapter_compute_dtype: str = field(
        default="input",
        metadata={
            "help": "Dtype of the adapter's matmuls: `input` runs them in the activations' dtype (bf16 on a bf16 "
            "model) while the trainable weights stay in their own dtype (fp32 masters under LLaMA-Factory), as "
            "autocast does; `parameter` runs them in the weights' dtype, as peft's LoRA does."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules trained in full and saved with the adapter."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "LoRA-style init (A random, B zero); False gives random B (tests only)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType(PEFT_TYPE)
        check_int_at_least("r", self.r, 1)
        check_int_at_least("num_A", self.num_A, 1)
        check_int_at_least("num_B", self.num_B, 1)
        check_collaboration(self.collaboration, self.num_A, self.num_B)
        check_choice("activation_aware_mode", self.activation_aware_mode, ACTIVATION_AWARE_MODES)
        check_choice("adapter_compute_dtype", self.adapter_compute_dtype, COMPUTE_DTYPES)
        for name, rank in self.rank_pattern.items():
            check_int_at_least(f"rank_pattern[{name!r}]", rank, 1)
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
