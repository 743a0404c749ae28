"""`AiraMoeConfig`: every AIRA-MoE option, declared once, with its help text and its checks.

The LLaMA-Factory arguments are derived from these fields (`integration/arguments.py`): a field
whose metadata has `argument` becomes a LLaMA-Factory option of the same name; a field with
`llamafactory` is read from the LoRA option LLaMA-Factory already has (`lora_rank` for `r`).
The saved `adapter_config.json` therefore records how the adapter was initialised too.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType

from ..errors import AiraMoeError
from .peft_type import PEFT_TYPE, add_peft_type

add_peft_type()

Collaboration = Literal["fully", "heuristic", "learned"]


def option(default: Any, help: str) -> Any:
    """A field of our own that LLaMA-Factory users set under the same name."""
    return field(default=default, metadata={"help": help, "argument": True})


def lora_option(default: Any, help: str, llamafactory: str) -> Any:
    """A field LLaMA-Factory users set through an existing LoRA option (`llamafactory`)."""
    return field(default=default, metadata={"help": help, "llamafactory": llamafactory})


@dataclass
class AiraMoeConfig(PeftConfig):
    """Configuration of an AIRA-MoE adapter (docs/method.md).

    Per-module ranks (`rank_pattern`) are stored here so that a layer-wise-rank adapter reloads
    with the right shapes and no calibration; the activation weights and the AwSVD residual are
    buffers in the adapter's state dict. The technique options describe how
    `aira_moe.initialize_aira_moe` initialises the adapter; `get_peft_model` alone ignores them.
    """

    r: int = lora_option(8, "Rank r of every A_i and B_j unless `rank_pattern` says otherwise.", "lora_rank")
    lora_alpha: float = lora_option(16, "Scaling numerator: s = lora_alpha / r.", "lora_alpha")
    lora_dropout: float = lora_option(0.0, "Dropout on the adapter's input.", "lora_dropout")
    use_rslora: bool = lora_option(False, "Use s = lora_alpha / sqrt(r).", "use_rslora")
    target_modules: Optional[Union[list[str], str]] = lora_option(
        None, "Module names (or a regex) to adapt; 'all-linear' for every linear layer.", "lora_target"
    )
    modules_to_save: Optional[list[str]] = lora_option(
        None, "Extra modules trained in full and saved with the adapter.", "additional_target"
    )
    num_A: int = option(2, "Number of A matrices (experts on the input side) per adapted layer (documented 2-4).")
    num_B: int = option(3, "Number of B matrices (experts on the output side) per adapted layer (documented 3-4).")
    collaboration: Collaboration = option(
        "fully",
        "How the A's and B's combine: `fully` (all pairs; exactly one rank-r adapter, "
        "so extra experts add no rank), `heuristic` (fixed pairing, needs num_A <= num_B) or `learned` "
        "(trainable Ω); with the last two the experts can hold min(num_A, num_B) x r directions.",
    )
    adapter_compute_dtype: Literal["input", "parameter"] = option(
        "input",
        "Dtype of the adapter's matmuls: `input` runs them in the activations' dtype (bf16 on a bf16 model) while "
        "the trainable weights keep their own dtype (fp32 masters under LLaMA-Factory), as autocast does; "
        "`parameter` runs them in the weights' dtype, as peft's LoRA does.",
    )
    bank_lr_scaling: bool = option(
        True,
        "Divide each expert bank's learning rate by the number of experts that share its gradient, so that "
        "`learning_rate` means what it means for LoRA (`fully` then trains as LoRA at rank r); false gives every "
        "bank the full rate, as before (`fully` then moves num_A x num_B times as fast).",
    )
    use_activation_aware: bool = option(False, "Scale adapter channels by static activation weights from calibration.")
    activation_aware_mode: Literal["inps", "outps"] = option(
        "inps", "Scale the adapter's input channels (`inps`, from rms_in) or output channels (`outps`, from rms_out)."
    )
    activation_normalize: bool = option(True, "Clip activation weights to [0.1, 10] and rescale them to mean 1.")
    use_layer_wise_rank: bool = option(False, "Allocate ranks per decoder block from outlier statistics (LOD).")
    rank_budget: Optional[int] = option(
        None, "Sum over decoder blocks of the per-expert rank r_l under layer-wise allocation (e.g. 128-256)."
    )
    theta_type: Literal["lod", "uniform"] = option(
        "lod", "Per-block importance: `lod` (outlier fraction) or `uniform` (ablation)."
    )
    objective_function: Literal["log"] = option("log", "Allocation objective: `log` maximises Σ θ_l log r_l.")
    min_rank: int = option(2, "Smallest rank a block may get (documented 2-4).")
    max_rank: int = option(64, "Largest rank a block may get (documented 32-64).")
    lod_threshold_M: float = option(2.0, "A score counts as an outlier above M x the block mean (documented 1.8-2.5).")
    use_awsvd_init: bool = option(
        False,
        "Initialise the experts from the activation-weighted SVD of the weight (each pairing its own slice under "
        "heuristic / learned) and subtract their product P0 from the frozen weight; P0 is saved with the adapter.",
    )
    awsvd_lr_ratio: float = option(
        0.25,
        "With use_awsvd_init and bank_lr_scaling, every bank's learning rate is multiplied by this: SVD-started "
        "factors are large from step 0, so one Adam step moves the product more than from LoRA's zero start (the "
        "AwSVD modes' and PiSSA's best rates sat 2-4x below LoRA's; 4x for heuristic / learned on every domain "
        "measured, 2x for fully on two of four); 1.0 turns it off.",
    )
    awsvd_collect_steps: int = option(
        100, "Calibration batches (a seeded random sample of the training set), used by every technique (100-200)."
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (or a regex) never to adapt."}
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "Module name (or regex) -> rank, overriding `r`; written by layer-wise rank allocation."},
    )
    init_weights: bool = field(
        default=True, metadata={"help": "LoRA-style init (A random, B zero); False gives random B (tests only)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType(PEFT_TYPE)
        check_options({f.name: getattr(self, f.name) for f in fields(self)})
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)

    @property
    def needs_calibration(self) -> bool:
        """Whether any activation-informed technique is on (all three read the calibration statistics)."""
        return self.use_activation_aware or self.use_layer_wise_rank or self.use_awsvd_init


def choices(name: str) -> tuple[str, ...]:
    """The allowed values of a Literal-typed option, read from its one declaration."""
    hint = typing.get_type_hints(AiraMoeConfig)[name]
    return typing.get_args(hint)


INTEGER_OPTIONS = ("r", "num_A", "num_B", "min_rank", "max_rank", "awsvd_collect_steps")
BOOLEAN_OPTIONS = ("use_rslora", "bank_lr_scaling", "use_activation_aware", "activation_normalize", "use_layer_wise_rank", "use_awsvd_init")
POSITIVE_NUMBER_OPTIONS = ("lod_threshold_M", "awsvd_lr_ratio")
CHOICE_OPTIONS = ("collaboration", "adapter_compute_dtype", "activation_aware_mode", "theta_type", "objective_function")


def check_options(values: Mapping[str, Any], label: Callable[[str], str] = str) -> None:
    """Check option values; each message names the option (as `label` spells it), the value and what is allowed.

    Values from YAML reach the checks unconverted, so types are checked as well as ranges.
    """
    for name in INTEGER_OPTIONS:
        check_int_at_least(label(name), values[name], 1)
    for name in BOOLEAN_OPTIONS:
        if not isinstance(values[name], bool):
            raise AiraMoeError(f"`{label(name)}` must be true or false, got {values[name]!r} ({type(values[name]).__name__}).")
    for name in CHOICE_OPTIONS:
        if values[name] not in choices(name):
            raise AiraMoeError(f"`{label(name)}` must be one of {', '.join(choices(name))}; got {values[name]!r}.")
    dropout = values["lora_dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise AiraMoeError(f"`{label('lora_dropout')}` must be a number in [0, 1), got {dropout!r}.")
    for name in POSITIVE_NUMBER_OPTIONS:
        number = values[name]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not number > 0:
            raise AiraMoeError(f"`{label(name)}` must be a number > 0, got {number!r}.")
    if values["collaboration"] == "heuristic" and values["num_A"] > values["num_B"]:
        raise AiraMoeError(
            f"`{label('collaboration')}: heuristic` needs num_A <= num_B (each A owns at least one B); "
            f"got num_A={values['num_A']}, num_B={values['num_B']}. Use `fully` or `learned`, or raise num_B."
        )
    if values["min_rank"] > values["max_rank"]:
        raise AiraMoeError(f"`min_rank` ({values['min_rank']}) must not exceed `max_rank` ({values['max_rank']}).")
    if values["rank_budget"] is not None:
        check_int_at_least(label("rank_budget"), values["rank_budget"], 1)
    elif values["use_layer_wise_rank"]:
        raise AiraMoeError("`use_layer_wise_rank: true` needs `rank_budget` (the sum of per-block ranks, e.g. 128).")
    for name, rank in values["rank_pattern"].items():
        check_int_at_least(f"rank_pattern[{name!r}]", rank, 1)


def check_int_at_least(name: str, value: object, minimum: int) -> None:
    """Raise a ValueError naming the field unless `value` is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AiraMoeError(f"`{name}` must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise AiraMoeError(f"`{name}` must be an integer >= {minimum}, got {value}.")


def expert_pairings(collaboration: str, num_A: int, num_B: int) -> int:
    """How many rank-r slices the experts can hold: 1 for `fully` (one rank-r product), else min(num_A, num_B)."""
    return 1 if collaboration == "fully" else min(num_A, num_B)
