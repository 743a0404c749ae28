"""Load what users evaluate: a base model alone, base + an aira_moe or LoRA adapter, or a merged export."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def pick_device(device: str) -> torch.device:
    """`auto` means the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def adapter_type(adapter: str) -> str:
    """The peft type named in the adapter's config, so the caller can say what it is scoring."""
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"--adapter {adapter}: no adapter_config.json there (expected a peft adapter directory)")
    return json.loads(config.read_text())["peft_type"]


def load_model(model: str, adapter: str | None, device: torch.device):
    """(model, tokenizer), in eval mode, bf16 on GPU and fp32 on CPU; the tokenizer pads on the left for batching.

    Adapters load through peft's own `PeftModel.from_pretrained`: an aira_moe adapter works because
    importing peft registers the method (the package's activation hook), a LoRA adapter as usual.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(adapter if adapter and _has_tokenizer(adapter) else model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    network = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    if adapter:
        from peft import PeftModel

        network = PeftModel.from_pretrained(network, adapter)
    return network.to(device).eval(), tokenizer


def _has_tokenizer(folder: str) -> bool:
    return (Path(folder) / "tokenizer_config.json").is_file()
