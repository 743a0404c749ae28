"""torchrun worker for test_calibration: statistics and the whole initialisation on one of 2 gloo processes."""

import hashlib
import json
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
    model = tiny_llama().to(device)
    stats = collect_statistics(model, linear_modules(model), make_batches(count=5))
    torch.save(
        {n: {"sum_sq_in": s.sum_sq_in, "sum_sq_out": s.sum_sq_out, "tokens": s.tokens} for n, s in stats.items()},
        out / f"stats_rank{rank}.pt",
    )
    own_disk = out / f"disk_rank{rank}"  # no shared output_dir: only rank 0's disk ever holds the cache
    results = {}
    for attempt in ("first", "second"):
        peft_model = initialize_aira_moe(tiny_llama().to(device), AiraMoeConfig(**CONFIG), make_batches(count=5),
                                         output_dir=own_disk, show_progress=False)
        results[attempt] = checksum(peft_model)
    results["ranks"] = sorted(peft_model.peft_config["default"].rank_pattern.items())
    results["cache_on_disk"] = (own_disk / CACHE_FILE).is_file()
    (out / f"result_rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def checksum(peft_model) -> str:
    """sha256 over every tensor (factors, residuals, W - P0, activation weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(peft_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
