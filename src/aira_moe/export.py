"""Export a trained aira_moe adapter as a stock peft LoRA adapter for the ORIGINAL base model (invariant 6).

Per layer the trained adapter changes the original weight by ΔW_final - P0 (P0 is the AwSVD
residual, zero without AwSVD). With ΔW_final = L R and P0 = L0 R0 (both from the layer), that
is [L, -L0] @ [R; R0]: a LoRA pair of rank r_lora = rows(R) + rows(R0) with scaling 1
(lora_alpha = r_lora). Stock peft (or vLLM) loads it with this package absent.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from .errors import AiraMoeError
from .tuner import AiraMoeLayer
from .tuner.peft_type import PEFT_TYPE, saved_peft_type

PREFIX = "base_model.model."


def lora_factors(layer: AiraMoeLayer, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) of the LoRA pair with B @ A = ΔW_final - P0, in fp32."""
    left, right = layer.delta_factors(adapter_name)
    if adapter_name in layer.aira_res_left:
        left = torch.cat([left, -layer.aira_res_left[adapter_name].float()], dim=1)
        right = torch.cat([right, layer.aira_res_right[adapter_name].float()], dim=0)
    return left, right


def check_aira_moe_adapter(folder: Path) -> None:
    """Refuse, naming the file, anything but a readable AIRA-MoE adapter, before the base model loads."""
    peft_type = saved_peft_type(folder, "--adapter")
    if peft_type != PEFT_TYPE:
        raise AiraMoeError(f"--adapter {folder}: adapter_config.json says peft_type {peft_type!r}; export-lora converts "
                           f"{PEFT_TYPE} adapters (a LoRA adapter needs no conversion)")


def export_lora(base_model: str, adapter_dir: str, output_dir: str, adapter_name: str = "default") -> Path:
    """Write a LoRA adapter to `output_dir` that reproduces the aira_moe adapter on the original base."""
    from transformers import AutoModelForCausalLM

    check_aira_moe_adapter(Path(adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir, adapter_name=adapter_name)
    if model.peft_config[adapter_name].modules_to_save:
        raise AiraMoeError("export-lora does not carry `additional_target` / modules_to_save; merge instead.")
    factors = {
        name.removeprefix(PREFIX): lora_factors(module, adapter_name)
        for name, module in model.named_modules()
        if isinstance(module, AiraMoeLayer) and adapter_name in module.aira_A
    }
    original = model.unload()  # gives every residual back: the original base weights
    ranks = {name: B.shape[1] for name, (B, _) in factors.items()}
    config = LoraConfig(
        r=max(ranks.values()),
        lora_alpha=max(ranks.values()),
        target_modules=sorted(factors),
        rank_pattern=dict(ranks),
        alpha_pattern=dict(ranks),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )
    lora = get_peft_model(original, config)
    with torch.no_grad():
        for name, module in lora.named_modules():
            key = name.removeprefix(PREFIX)
            if key in factors:
                B, A = factors[key]
                module.lora_B["default"].weight.copy_(B)
                module.lora_A["default"].weight.copy_(A)
    output = Path(output_dir)
    lora.save_pretrained(output)
    return output
