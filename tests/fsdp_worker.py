"""torchrun worker for test_fsdp: a few training steps of aira_moe under FSDP (FULL_SHARD, gloo on CPU).

`reference` (one process, no FSDP) writes the losses and the adapter's weights the FSDP run must reproduce.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import get_peft_model
from peft.utils.other import fsdp_auto_wrap_policy
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_llama  # noqa: E402

from aira_moe import AiraMoeConfig  # noqa: E402
from aira_moe.tuner import AiraMoeLayer  # noqa: E402

STEPS = 3


def adapted_model() -> torch.nn.Module:
    """bf16 base, fp32 adapter (as LLaMA-Factory upcasts trainable parameters), tied embeddings, activation weights."""
    config = AiraMoeConfig(r=4, num_A=2, num_B=3, collaboration="learned", use_activation_aware=True,
                           target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    model = get_peft_model(tiny_llama(tie_word_embeddings=True).to(torch.bfloat16), config)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, AiraMoeLayer):
            module.set_activation_weights("default", torch.rand(module.in_features, generator=generator) + 0.5)
    for parameter in model.parameters():
        if parameter.requires_grad:  # B starts at zero: give it values so that every factor gets gradients
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.05
    return model


def train(model: torch.nn.Module) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's entries (banks, omega, activation weights) of a full state dict, FSDP's prefixes removed."""
    return {key.replace("_fsdp_wrapped_module.", ""): value.float() for key, value in state.items() if ".aira_" in key}


def main(mode: str, out: Path) -> None:
    if mode == "reference":
        model = adapted_model()
        losses = train(model)
        torch.save(adapter_state(model.state_dict()), out / "reference.pt")
        (out / "reference.json").write_text(json.dumps({"losses": losses}))
        return
    dist.init_process_group("gloo")
    model = adapted_model()
    try:  # peft's own policy alone puts the fp32 banks and the bf16 base into one unit
        FullyShardedDataParallel(adapted_model(), auto_wrap_policy=fsdp_auto_wrap_policy.__wrapped__(model),
                                 device_id=torch.device("cpu"), use_orig_params=True)
        peft_policy_error = ""
    except ValueError as error:
        peft_policy_error = str(error)
    wrapped = FullyShardedDataParallel(model, auto_wrap_policy=fsdp_auto_wrap_policy(model),
                                       device_id=torch.device("cpu"), use_orig_params=True)
    losses = train(wrapped)
    units = sum(isinstance(module, FullyShardedDataParallel) for module in wrapped.modules())
    with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                                                  FullStateDictConfig(rank0_only=False)):
        state = wrapped.state_dict()
    rank = dist.get_rank()
    torch.save(adapter_state(state), out / f"fsdp_rank{rank}.pt")
    (out / f"fsdp_rank{rank}.json").write_text(json.dumps({"losses": losses, "units": units,
                                                           "peft_policy_error": peft_policy_error}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
