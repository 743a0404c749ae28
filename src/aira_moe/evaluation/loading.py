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


def adapter_config(adapter: str) -> dict:
    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"--adapter {adapter}: no adapter_config.json there (expected a peft adapter directory)")
    return json.loads(config.read_text())


def adapter_type(adapter: str) -> str:
    """The peft type named in the adapter's config, so the caller can say what it is scoring."""
    return adapter_config(adapter)["peft_type"]


def check_reloadable(adapter: str) -> None:
    """Refuse an unconverted fast-SVD PiSSA adapter: it cannot be scored faithfully.

    peft rebuilds such an adapter's residual base by re-running PiSSA's randomized SVD (rank r, no
    oversampling) when it loads it; on SmolLM2 two runs of it differ by 13-20% of the weight's norm,
    so the loaded model is not the trained one.
    """
    init = adapter_config(adapter).get("init_lora_weights")
    if isinstance(init, str) and init.startswith("pissa_niter_"):
        raise SystemExit(
            f"--adapter {adapter}: init_lora_weights is {init!r}; peft re-runs that randomized SVD on loading, which "
            "does not rebuild the trained model. Score the converted adapter instead (LLaMA-Factory's "
            "`pissa_convert: true` saves it in OUTPUT_DIR/pissa_converted), or train with `pissa_iter: -1` (exact SVD)."
        )


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
