"""Make `AIRA_MOE` a peft type, so peft's own save, load and `PeftModel.from_pretrained` handle it.

peft's `register_peft_method` only accepts names already in its closed `PeftType` enum, and
saving rejects anything outside `list(PeftType)`; so the enum member is added at run time
first. Both steps are idempotent: the post-import hook and explicit calls may both run them.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Optional

PEFT_TYPE = "AIRA_MOE"
METHOD_NAME = "aira_moe"
PREFIX = "aira_"
EXPECTED_PEFT = "0.18.1"


def _require(condition: bool, what: str) -> None:
    """Fail with the installed and expected peft versions when peft's internals are not as assumed."""
    if not condition:
        import peft

        raise RuntimeError(
            f"aira_moe cannot register with peft {peft.__version__}: {what}. "
            f"It was written against peft {EXPECTED_PEFT}; install that version."
        )


def add_peft_type() -> None:
    """Add the `AIRA_MOE` member to `peft.utils.PeftType` (no-op when present)."""
    from peft.utils.peft_types import PeftType

    if PEFT_TYPE in PeftType.__members__:
        return
    for attr in ("_member_map_", "_value2member_map_", "_member_names_"):
        _require(hasattr(PeftType, attr), f"PeftType has no {attr}")
    member = str.__new__(PeftType, PEFT_TYPE)
    member._name_ = PEFT_TYPE
    member._value_ = PEFT_TYPE
    member.__objclass__ = PeftType
    PeftType._member_map_[PEFT_TYPE] = member
    PeftType._value2member_map_[PEFT_TYPE] = member
    PeftType._member_names_.append(PEFT_TYPE)
    type.__setattr__(PeftType, PEFT_TYPE, member)
    _require(PeftType(PEFT_TYPE) is member and member in list(PeftType), "the new PeftType member is not visible")


def register_with_peft(_peft_module: Optional[ModuleType] = None) -> None:
    """Register config, tuner and prefix with peft (the post-import hook passes the peft module)."""
    config_module = sys.modules.get("aira_moe.tuner.config")
    if config_module is not None and not hasattr(config_module, "AiraMoeConfig"):
        return  # our tuner's own import pulled peft in; `aira_moe.tuner` registers once its classes exist
    add_peft_type()
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType, register_peft_method

    if PeftType(PEFT_TYPE) in PEFT_TYPE_TO_TUNER_MAPPING:
        return
    from .config import AiraMoeConfig
    from .model import AiraMoeModel

    register_peft_method(name=METHOD_NAME, config_cls=AiraMoeConfig, model_cls=AiraMoeModel, prefix=PREFIX)
