"""Shared fixtures: tiny random Llama models, the SmolLM2 tokenizer, the MedMCQA demo data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Threads per process: the cores shared among the xdist workers, set before torch loads and passed on to
# every subprocess. Two workers each running torch at full width on two cores made the suite 2.5x slower.
# (Only in the workers: the controller's environment, which they inherit, is left alone.)
if "PYTEST_XDIST_WORKER" in os.environ:
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import pytest  # noqa: E402
import torch  # noqa: E402

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def tiny_llama_config(vocab_size: int = 128, **overrides):
    from transformers import LlamaConfig

    values = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides):
    """A fp32 2-layer Llama with random weights, in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct checkpoint (converted once, then cached)."""
    from aira_moe.smollm2 import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny random Llama saved with SmolLM2's tokenizer, for fast runs of the stock CLI."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_model")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def medmcqa_dir(tmp_path_factory) -> Path:
    from aira_moe.demo_data import write_medmcqa

    path = tmp_path_factory.mktemp("data")
    write_medmcqa(path)
    return path


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """`aira-moe prepare-data` on the shared raw data, with the repository's dataset registry beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    from aira_moe.cli import main

    output = tmp_path_factory.mktemp("prepared")
    main(["prepare-data", "--source", str(SHARED_DATA), "--output", str(output)])  # in this process: one import less
    (output / "dataset_info.json").write_text((REPO / "data" / "dataset_info.json").read_text())
    return output


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    """Run a console script of this environment; fail with its output when it fails."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run code in a fresh interpreter of this environment (no state shared with the test process)."""
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"subprocess failed ({result.returncode}):\n{output[-6000:]}"
    return output
