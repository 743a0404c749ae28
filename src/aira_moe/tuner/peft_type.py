"""The `AIRA_MOE` member of peft's closed `PeftType` enum, added at run time.

peft's `register_peft_method` only accepts names already in `PeftType`, and saving rejects
anything outside `list(PeftType)`; so the member must exist before the config class is built.
Adding it is idempotent: the start-up hook and an explicit import may both ask for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AiraMoeError

PEFT_TYPE = "AIRA_MOE"
METHOD_NAME = "aira_moe"
PREFIX = "aira_"
EXPECTED_PEFT = "0.18.1"


def require_peft(condition: bool, what: str) -> None:
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
        require_peft(hasattr(PeftType, attr), f"PeftType has no {attr}")
    member = str.__new__(PeftType, PEFT_TYPE)
    member._name_ = PEFT_TYPE
    member._value_ = PEFT_TYPE
    member.__objclass__ = PeftType
    PeftType._member_map_[PEFT_TYPE] = member
    PeftType._value2member_map_[PEFT_TYPE] = member
    PeftType._member_names_.append(PEFT_TYPE)
    type.__setattr__(PeftType, PEFT_TYPE, member)
    require_peft(PeftType(PEFT_TYPE) is member and member in list(PeftType), "the new PeftType member is not visible")


def saved_peft_type(folder: Path, option: str) -> str | None:
    """The peft type in `folder/adapter_config.json`; a missing or unreadable file is refused, naming `option` and it."""
    return saved_adapter_config(folder, option).get("peft_type")


def saved_adapter_config(folder: Path, option: str) -> dict:
    """`folder/adapter_config.json` as a dict; a missing or unreadable file is refused, naming `option` and it."""
    config = folder / "adapter_config.json"
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        return values
    except FileNotFoundError:
        raise AiraMoeError(f"{option}: {folder} has no adapter_config.json; is it an adapter folder?") from None
    except (OSError, ValueError, AttributeError) as error:
        raise AiraMoeError(f"{option}: cannot read {config} ({type(error).__name__}: {error}).") from None
