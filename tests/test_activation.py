"""The start-up hook: shipped by both install modes, active in any process, loud when LLaMA-Factory differs."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO, run_python

from aira_moe.integration import patches


def build(kind: str, out: Path) -> Path:
    """Build a wheel of this checkout with the environment's setuptools (no network)."""
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_both_install_modes_ship_the_hook_at_the_site_root(tmp_path, kind):
    names = zipfile.ZipFile(build(kind, tmp_path)).namelist()
    assert "aira_moe.pth" in names


def test_installed_wheel_activates_in_a_process_that_never_imports_aira_moe(tmp_path):
    """`pip install .` layout: the wheel's .pth, processed as a site dir, registers the peft type."""
    wheel = build("wheel", tmp_path / "dist")
    site_dir = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site_dir)
    env_site = sysconfig.get_paths()["purelib"]
    code = f"""
import site, sys
site.addsitedir({str(site_dir)!r})
site.addsitedir({env_site!r})
import peft
from peft.utils import PeftType
import aira_moe
assert aira_moe.__file__.startswith({str(site_dir)!r}), aira_moe.__file__
print("REGISTERED", "AIRA_MOE" in PeftType.__members__)
"""
    output = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert "REGISTERED True" in output.stdout, output.stdout + output.stderr


def test_llamafactory_knows_aira_moe_without_importing_it():
    code = """
from llamafactory.extras.constants import METHODS
from llamafactory.hparams import get_infer_args
*_, finetuning_args, _ = get_infer_args(dict(model_name_or_path="m", finetuning_type="aira_moe", template="chatml"))
print("aira_moe" in METHODS, type(finetuning_args).__name__)
"""
    assert "True AiraMoeFinetuningArguments" in run_python(code)


def test_importing_our_tuner_first_registers_without_warnings():
    """`from aira_moe import AiraMoeConfig` before peft: the peft hook fires mid-import and must wait."""
    code = """
import warnings
warnings.simplefilter("error")
from aira_moe import AiraMoeConfig
from peft.utils import PeftType
print("REGISTERED", "AIRA_MOE" in PeftType.__members__, AiraMoeConfig().peft_type)
"""
    assert "REGISTERED True PeftType.AIRA_MOE" in run_python(code)


def test_hook_can_be_switched_off():
    code = """
import peft, llamafactory.hparams.parser as parser
from peft.utils import PeftType
print("AIRA_MOE" in PeftType.__members__, parser._verify_model_args.__module__)
"""
    assert "False llamafactory.hparams.parser" in run_python(code, env={"AIRA_MOE_DISABLE_HOOK": "1"})


def test_patch_names_what_is_missing_and_the_versions():
    stale = ModuleType("llamafactory.hparams.parser")
    stale.FinetuningArguments = object
    with pytest.raises(patches.IncompatibleLlamaFactory, match=r"parser._TRAIN_ARGS not found.*0\.9\.5"):
        patches.patch_parser(stale)


def test_a_failing_patch_warns_instead_of_breaking_the_import():
    code = """
import warnings, types
from aira_moe import _bootstrap
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    _bootstrap._run_hook("llamafactory.model.loader", types.ModuleType("llamafactory.model.loader"))
print([str(w.message) for w in caught])
"""
    output = run_python(code)
    assert "could not patch llamafactory.model.loader" in output and "init_adapter not found" in output
