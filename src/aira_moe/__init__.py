"""AIRA-MoE: collaborative multi-A/multi-B low-rank adaptation as a LLaMA-Factory finetuning type.

Importing this package stays cheap (the `.pth` start-up hook imports it in every process);
the peft classes load on first attribute access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AiraMoeConfig", "AiraMoeModel", "initialize_aira_moe", "install"]


def install() -> None:
    """Activate the peft and LLaMA-Factory patches in this process (the `.pth` hook does it at start-up)."""
    from ._bootstrap import activate

    activate()


def __getattr__(name: str) -> Any:
    if name in ("AiraMoeConfig", "AiraMoeModel"):
        from . import tuner

        return getattr(tuner, name)
    if name == "initialize_aira_moe":
        from .techniques import initialize_aira_moe

        return initialize_aira_moe
    raise AttributeError(f"module 'aira_moe' has no attribute {name!r}")
