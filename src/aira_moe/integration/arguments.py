"""The `aira_moe` options as LLaMA-Factory finetuning arguments, derived from `AiraMoeConfig`'s fields.

Each option is declared once, in `tuner/config.py`; here it becomes a dataclass field of the
same name, type, default and help. Checks run in `__post_init__`, i.e. while LLaMA-Factory
parses the YAML or the CLI flags, before any model is loaded, and are the config's own checks.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Literal

from llamafactory.hparams.finetuning_args import FinetuningArguments

from ..errors import AiraMoeError
from ..tuner.config import AiraMoeConfig, check_options

FINETUNING_TYPE = "aira_moe"
SUPPORTED_STAGES = ("pt", "sft", "rm", "dpo", "kto")
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
# LLaMA-Factory optimizers that aira_moe allows but that build their own parameter groups
OWN_OPTIMIZERS = ("use_adam_mini", "use_muon")
_HINTS = typing.get_type_hints(AiraMoeConfig)
OUR_OPTIONS = tuple(f.name for f in fields(AiraMoeConfig) if f.metadata.get("argument"))
# config field -> the LLaMA-Factory (LoRA) argument it is read from
SHARED_OPTIONS = {f.name: f.metadata["llamafactory"] for f in fields(AiraMoeConfig) if "llamafactory" in f.metadata}

AiraMoeArguments = make_dataclass(
    "AiraMoeArguments",
    [
        (f.name, _HINTS[f.name], field(default=f.default, metadata={"help": f.metadata["help"]}))
        for f in fields(AiraMoeConfig)
        if f.metadata.get("argument")
    ],
)
AiraMoeArguments.__doc__ = "The options of `AiraMoeConfig` that LLaMA-Factory users set by name."


def argument_name(config_field: str) -> str:
    """How a LLaMA-Factory user spells a config field (`r` is `lora_rank`)."""
    return SHARED_OPTIONS.get(config_field, config_field)


def option_values(args: Any) -> dict[str, Any]:
    """The config fields' values as LLaMA-Factory's arguments hold them (`r` from `lora_rank`, ...)."""
    values = {name: getattr(args, name) for name in OUR_OPTIONS}
    values.update({name: getattr(args, argument) for name, argument in SHARED_OPTIONS.items()})
    values["rank_pattern"] = {}
    return values


def validate_aira_moe_arguments(args: "AiraMoeFinetuningArguments") -> None:
    """The config's checks under LLaMA-Factory's names, then the rules of the LLaMA-Factory side."""
    check_options(option_values(args), label=argument_name)
    if args.stage not in SUPPORTED_STAGES:
        raise AiraMoeError(f"`stage` must be one of {', '.join(SUPPORTED_STAGES)} with finetuning_type aira_moe; got {args.stage!r}.")
    for name in OWN_OPTIMIZERS:
        if args.bank_lr_scaling and getattr(args, name, False):
            raise AiraMoeError(f"`{name}: true` builds its own optimizer, which has no per-bank learning rates; "
                               f"set `bank_lr_scaling: false` to use it with finetuning_type aira_moe.")
    for name, off in REFUSED_LORA_OPTIONS.items():
        if getattr(args, name, off) != off:
            raise AiraMoeError(
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
