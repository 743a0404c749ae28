"""torchrun worker for test_calibration: statistics, rank allocation and AwSVD on one of 2 gloo processes."""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_llama  # noqa: E402
from test_calibration import linear_modules, make_batches  # noqa: E402

from aira_moe import AiraMoeConfig  # noqa: E402
from aira_moe.awsvd import apply_awsvd_init  # noqa: E402
from aira_moe.calibration import collect_statistics  # noqa: E402
from aira_moe.rank_allocation import allocate_ranks, lod_theta  # noqa: E402


def main(out: Path) -> None:
    """gloo on CPU (the test); NCCL with one GPU per process where CUDA is present (the GPU check)."""
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        torch.cuda.set_device(rank)
    model = tiny_llama().to(f"cuda:{rank}" if cuda else "cpu")
    modules = linear_modules(model)
    stats = collect_statistics(model, modules, make_batches(count=5), steps=5)
    torch.save(
        {n: {"sum_sq_in": s.sum_sq_in, "sum_sq_out": s.sum_sq_out, "tokens": s.tokens} for n, s in stats.items()},
        out / f"stats_rank{rank}.pt",
    )
    theta = lod_theta({n: m.weight for n, m in modules.items()}, {n: stats[n].input_norm for n in modules}, 1.5)
    ranks = allocate_ranks([theta[b] for b in sorted(theta)], 7, 2, 5)
    (out / f"ranks_rank{rank}.json").write_text(json.dumps(ranks))
    (out / f"checksum_rank{rank}.txt").write_text(awsvd_checksum(model, stats))
    dist.destroy_process_group()


def awsvd_checksum(model, stats) -> str:
    """sha256 over every tensor (factors, residuals, W - P0) after AwSVD with the all-reduced statistics."""
    from peft import get_peft_model

    config = AiraMoeConfig(r=4, num_A=2, num_B=3, target_modules="all-linear", use_awsvd_init=True)
    peft_model = get_peft_model(model, config)
    apply_awsvd_init(peft_model, stats)
    digest = hashlib.sha256()
    for name, tensor in sorted(peft_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
