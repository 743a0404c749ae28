"""Post-import hooks that teach peft and LLaMA-Factory the `aira_moe` type in every process.

`aira_moe.pth` calls `activate()` at each interpreter start, torchrun workers included. That
runs before anything else is imported, so it must stay cheap (no torch, no peft) and must
never raise: it only puts a finder on `sys.meta_path`. When one of the target modules is
imported later, the finder lets it execute normally and then applies our patch to it.
Set `AIRA_MOE_DISABLE_HOOK=1` to get a process that knows nothing of this package.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import warnings
from types import ModuleType

# module imported -> "module:function" that patches it (the function receives the module)
HOOKS: dict[str, str] = {
    "peft": "aira_moe._bootstrap:import_tuner",
    "llamafactory.extras.constants": "aira_moe.integration.patches:patch_constants",
    "llamafactory.hparams.parser": "aira_moe.integration.patches:patch_parser",
    "llamafactory.model.loader": "aira_moe.integration.patches:patch_loader",
    "llamafactory.launcher": "aira_moe.integration.patches:patch_launcher",
    "llamafactory.train.tuner": "aira_moe.integration.patches:patch_tuner",
    "llamafactory.data.loader": "aira_moe.integration.patches:patch_data_loader",
    "llamafactory.train.pt.workflow": "aira_moe.integration.patches:patch_workflow",
    "llamafactory.train.sft.workflow": "aira_moe.integration.patches:patch_workflow",
    "llamafactory.train.rm.workflow": "aira_moe.integration.patches:patch_workflow",
    "llamafactory.train.dpo.workflow": "aira_moe.integration.patches:patch_workflow",
    "llamafactory.train.kto.workflow": "aira_moe.integration.patches:patch_workflow",
    "llamafactory.train.trainer_utils": "aira_moe.integration.patches:patch_trainer_utils",
    "llamafactory.webui.components.train": "aira_moe.integration.patches:patch_webui_train",
    "llamafactory.webui.runner": "aira_moe.integration.patches:patch_webui_runner",
}
DISABLE_ENV = "AIRA_MOE_DISABLE_HOOK"


def import_tuner(_peft: ModuleType) -> None:
    """Importing `aira_moe.tuner` registers it with peft.

    When that import is itself what is importing peft, the tuner is already in `sys.modules`,
    half-built, and registers itself once its classes exist.
    """
    if "aira_moe.tuner" not in sys.modules:
        importlib.import_module("aira_moe.tuner")


def _run_hook(name: str, module: ModuleType) -> None:
    """Apply one patch; a failure is reported loudly but never breaks the user's import."""
    target = HOOKS[name]
    module_name, func_name = target.split(":")
    try:
        getattr(importlib.import_module(module_name), func_name)(module)
    except Exception as exc:  # noqa: BLE001 - a broken patch must not break e.g. plain LoRA runs
        warnings.warn(
            f"aira_moe: could not patch {name} ({type(exc).__name__}: {exc}); "
            "the `aira_moe` finetuning type is unavailable in this process.",
            RuntimeWarning,
            stacklevel=2,
        )


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a hooked module to run its patch afterwards."""

    def __init__(self) -> None:
        self._resolving: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in HOOKS or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original_exec = spec.loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            original_exec(module)
            _run_hook(fullname, module)

        spec.loader.exec_module = exec_then_patch
        return spec


def activate() -> None:
    """Install the hooks (idempotent); patch at once whatever is already imported."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return
    if any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _PostImportFinder())
    for name in HOOKS:
        if name in sys.modules:
            _run_hook(name, sys.modules[name])
