"""torchrun worker for test_calibration: statistics and the whole initialisation on one of 2 gloo processes."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_llama  # noqa: E402
from test_calibration import linear_modules, make_batches  # noqa: E402

from aira_moe import AiraMoeConfig, initialize_aira_moe  # noqa: E402
from aira_moe.techniques.calibration import CACHE_FILE, collect_statistics  # noqa: E402

CONFIG = dict(r=2, num_A=2, num_B=4, collaboration="heuristic", target_modules="all-linear", use_activation_aware=True,
              use_layer_wise_rank=True, rank_budget=7, min_rank=2, max_rank=5, lod_threshold_M=1.5,
              use_awsvd_init=True, awsvd_collect_steps=5)


def main(out: Path) -> None:
    """gloo on CPU (the test); NCCL with one GPU per process where CUDA is present (the GPU check)."""
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        torch.cuda.set_device(rank)
    device = f"cuda:{rank}" if cuda else "cpu"
    save_statistics(tiny_llama().to(device), out / f"stats_rank{rank}.pt")
    own_disk = out / f"disk_rank{rank}"  # no shared output_dir: only rank 0's disk ever holds the cache
    results = {}
    for attempt in ("first", "second"):
        peft_model = initialize_aira_moe(tiny_llama().to(device), AiraMoeConfig(**CONFIG), make_batches(count=5),
                                         output_dir=own_disk, show_progress=False)
        results[attempt] = checksum(peft_model)
    results["ranks"] = sorted(peft_model.peft_config["default"].rank_pattern.items())
    results["cache_on_disk"] = (own_disk / CACHE_FILE).is_file()
    results.update(ram_efficient_fsdp(out, rank, device))
    results.update(zero3(out, rank, device))
    (out / f"result_rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def save_statistics(model, path: Path) -> None:
    """This process's statistics over the 5 test batches, for the test to compare with one process's."""
    stats = collect_statistics(model, linear_modules(model), make_batches(count=5))
    torch.save({n: {"sum_sq_in": s.sum_sq_in, "sum_sq_out": s.sum_sq_out, "tokens": s.tokens} for n, s in stats.items()},
               path)


def ram_efficient_fsdp(out: Path, rank: int, device: str) -> dict:
    """As under accelerate's FSDP with RAM-efficient loading: local rank 0 holds the weights, the others zeros."""
    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    try:
        def loaded():
            model = tiny_llama().to(device)
            if int(os.environ["LOCAL_RANK"]) != 0:
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.zero_()
            return model

        save_statistics(loaded(), out / f"ram_efficient_stats_rank{rank}.pt")
        peft_model = initialize_aira_moe(loaded(), AiraMoeConfig(**CONFIG), make_batches(count=5),
                                         output_dir=out / f"ram_efficient_disk{rank}", show_progress=False)
        return {"ram_efficient_adapter": checksum(peft_model, only="aira_"),
                "ram_efficient_ranks": sorted(peft_model.peft_config["default"].rank_pattern.items())}
    finally:
        del os.environ["ACCELERATE_USE_FSDP"], os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"]


def zero3(out: Path, rank: int, device: str) -> dict:
    """As LLaMA-Factory loads under a ZeRO-3 config: `from_pretrained` partitions the weights (zero.Init), so
    calibration, LOD and AwSVD must gather what they read; 5 batches on 2 processes also make the shards unequal."""
    import deepspeed
    from transformers import LlamaForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    path = out / f"zero3_model{rank}"
    tiny_llama().save_pretrained(path)
    zero3_on = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    model = LlamaForCausalLM.from_pretrained(path).to(device)
    partitioned = tuple(model.model.layers[0].mlp.up_proj.weight.shape) == (0,)
    peft_model = initialize_aira_moe(model, AiraMoeConfig(**CONFIG), make_batches(count=5),
                                     output_dir=out / f"zero3_disk{rank}", show_progress=False)
    with deepspeed.zero.GatheredParameters(list(peft_model.parameters())):
        digest = checksum(peft_model)
    del zero3_on
    return {"zero3_partitioned": partitioned, "zero3_state": digest,
            "zero3_ranks": sorted(peft_model.peft_config["default"].rank_pattern.items())}


def checksum(peft_model, only: str = "") -> str:
    """sha256 over every tensor (factors, residuals, W - P0, activation weights), or those whose name has `only`."""
    digest = hashlib.sha256()
    for name, tensor in sorted(peft_model.state_dict().items()):
        if only not in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
