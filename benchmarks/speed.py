"""Training-step speed and memory of aira_moe against peft LoRA and a naive (i, j) loop, side by side.

One process, one model shape at a time, random weights (no download), bf16 base with fp32 trainable
parameters as LLaMA-Factory trains them. Per variant: step time (forward + backward + AdamW step),
tokens/s, MFU (4 x parameters x tokens FLOPs over the H200's 989 TFLOP/s dense bf16) and peak memory.

    python benchmarks/speed.py --output benchmarks/results/speed.json            # on a GPU
    python benchmarks/speed.py --smoke --output /tmp/speed.json                  # tiny CPU check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from aira_moe import AiraMoeConfig
from aira_moe.tuner import Linear as AiraMoeLinear
from llama_shapes import H200_BF16_FLOPS, LLAMA_SHAPES

SHAPES = {
    **LLAMA_SHAPES,
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# variant -> (method, num_A, num_B, extra config); rank 8 everywhere except `full` (budget 128);
# aira_moe runs its matmuls in bf16 with fp32 masters unless the variant says `parameter` (fp32, as LoRA);
# `frozen_base` has no adapter (the backward still runs through every block, as the input requires
# gradients): the floor no adapter can go below, so LoRA's time over it bounds any speed-up over LoRA.
VARIANTS = {
    "lora": ("lora", 1, 1, {}),
    "basic_2x3": ("aira", 2, 3, {}),
    "basic_2x3_fp32": ("aira", 2, 3, {"adapter_compute_dtype": "parameter"}),
    "basic_4x4": ("aira", 4, 4, {}),
    "learned_2x3": ("aira", 2, 3, {"collaboration": "learned"}),
    "standard_2x3": ("aira", 2, 3, {"use_activation_aware": True}),
    "full_2x3_budget128": ("aira", 2, 3, {"use_activation_aware": True, "use_awsvd_init": True, "budget": 128}),
    "naive_2x3": ("naive", 2, 3, {}),
    "naive_4x4": ("naive", 4, 4, {}),
    "frozen_base": ("none", 0, 0, {}),
}


def naive_adapter_output(self: AiraMoeLinear, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
    """CoLA's published forward: a Python double loop over every (A_i, B_j) pair (comparison only)."""
    r, num_A, num_B = self.r[adapter_name], self.num_A[adapter_name], self.num_B[adapter_name]
    x = self._cast_input_dtype(self.aira_dropout[adapter_name](x), self.matmul_dtype(x, adapter_name))
    A, B = self.aira_A[adapter_name].to(x.dtype), self.aira_B[adapter_name].to(x.dtype)
    omega = self.omega(adapter_name).to(x.dtype)
    out = 0
    for j in range(num_B):
        for i in range(num_A):
            out = out + omega[j, i] * F.linear(F.linear(x, A[i * r:(i + 1) * r]), B[:, j * r:(j + 1) * r])
    return out * self.scaling[adapter_name]


@contextlib.contextmanager
def naive_forward(enabled: bool):
    original = AiraMoeLinear.adapter_output
    if enabled:
        AiraMoeLinear.adapter_output = naive_adapter_output
    try:
        yield
    finally:
        AiraMoeLinear.adapter_output = original


def model_config(shape: str) -> LlamaConfig:
    """The config of `shape`, or of `shape:VOCAB` with another vocabulary (e.g. SmolLM2's 49152, as the
    end-to-end runs use), since the output layer and loss are a large share of a step."""
    name, _, vocab = shape.partition(":")
    return LlamaConfig(**{**SHAPES[name], **({"vocab_size": int(vocab)} if vocab else {})}, max_position_embeddings=4096)


def build(shape: str, variant: str, device: torch.device, dtype: torch.dtype):
    method, num_A, num_B, extra = VARIANTS[variant]
    config = model_config(shape)
    with torch.device(device):
        base = LlamaForCausalLM(config).to(dtype)
    if method == "none":
        base.requires_grad_(False)
        base.enable_input_require_grads()
        return base, False
    if method == "lora":
        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM")
    else:
        extra = dict(extra)
        budget = extra.pop("budget", None)
        rank_pattern = {}
        if budget:  # the budget spread as evenly as the allocation would for equal θ
            layers = config.num_hidden_layers
            for layer in range(layers):
                rank = budget // layers + (layer < budget % layers)
                rank_pattern.update({f"model.layers.{layer}.{part}.{name}": rank
                                     for part, names in (("self_attn", TARGETS[:4]), ("mlp", TARGETS[4:]))
                                     for name in names})
        peft_config = AiraMoeConfig(r=8, lora_alpha=16, num_A=num_A, num_B=num_B, target_modules=TARGETS,
                                    rank_pattern=rank_pattern, task_type="CAUSAL_LM", **extra)
    model = get_peft_model(base, peft_config)
    for param in model.parameters():  # LLaMA-Factory's default: trainable parameters in fp32
        if param.requires_grad:
            param.data = param.data.float()
    return model, method == "naive"


def profile_step(step, top: int) -> dict:
    """Where one step's time goes: the GPU's busy time against the step's wall time (a gap means the
    step waits on the CPU launching kernels) and the operators that keep the GPU busiest."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    return profile_summary(prof, top)


def profile_summary(prof, top: int) -> dict:
    """GPU busy ms, kernel launches and the `top` aten operators by GPU time of a finished torch profile."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: e.self_device_time_total, reverse=True)
    return {
        "gpu_busy_ms": round(sum(e.self_device_time_total for e in kernels) / 1000, 2),
        "kernel_launches": sum(e.count for e in kernels),
        "top_ops": [{"op": e.key, "gpu_ms": round(e.self_device_time_total / 1000, 2), "calls": e.count} for e in ops[:top]],
        # Triton kernels (Liger's) have no aten operator above them
        "top_kernels": [{"kernel": e.key[:120], "gpu_ms": round(e.self_device_time_total / 1000, 2), "calls": e.count}
                        for e in sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:top]],
    }


def measure(model, naive: bool, batch: int, seq: int, steps: int, warmup: int, checkpointing: bool, device,
            autocast: bool = False, profile_top: int = 0) -> dict:
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (batch, seq), device=device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable or [torch.zeros(1, requires_grad=True)], lr=1e-5)
    cuda = device.type == "cuda"

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    with naive_forward(naive):
        for index in range(warmup + steps):
            if index == warmup:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
            loss = step()
        if cuda:
            torch.cuda.synchronize()
        step_s = (time.perf_counter() - started) / steps
        peak_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        profiled = {"profile": profile_step(step, profile_top)} if profile_top else {}
    params = sum(p.numel() for p in model.parameters())
    return {
        "step_ms": round(step_s * 1000, 2),
        "tokens_per_s": round(batch * seq / step_s, 1),
        "mfu": round(4 * params * batch * seq / step_s / H200_BF16_FLOPS, 4),
        "peak_mem_gib": peak_gib,
        "trainable_params": sum(p.numel() for p in trainable),
        "final_loss": round(float(loss), 4),
        **profiled,
    }


def measure_variant(shape: str, variant: str, device: torch.device, dtype: torch.dtype, batch: int,
                    args: argparse.Namespace, checkpointing: bool) -> dict:
    """One variant at one batch size on a fresh model; `out_of_memory` instead of numbers when it does not fit."""
    torch.manual_seed(0)
    model = None
    try:
        model, naive = build(shape, variant, device, dtype)
        return measure(model, naive, batch, args.seq, args.steps, args.warmup, checkpointing, device, args.autocast,
                       args.profile)
    except torch.cuda.OutOfMemoryError:
        return {"out_of_memory": True}
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def one_time_costs(
    shape: str, device: torch.device, dtype: torch.dtype, batches: int, batch: int, seq: int, budget: int
) -> dict:
    """Calibration over `batches` batches, LOD allocation under `budget` and AwSVD of the full mode, timed."""
    from torch import nn

    from aira_moe.techniques import adapted_layers
    from aira_moe.techniques.awsvd import apply_awsvd_init
    from aira_moe.techniques.calibration import collect_statistics
    from aira_moe.techniques.rank_allocation import allocate_ranks, block_of, lod_theta

    def synchronized() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    config = model_config(shape)
    with torch.device(device):
        base = LlamaForCausalLM(config).to(dtype)
    modules = {n: m for n, m in base.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in TARGETS}
    data = [{"input_ids": torch.randint(0, config.vocab_size, (batch, seq), device=device),
             "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device)} for _ in range(batches)]
    started = synchronized()
    stats = collect_statistics(base, modules, data)
    calibrated = synchronized()
    theta = lod_theta({n: m.weight for n, m in modules.items()}, {n: stats[n].input_norm for n in modules}, 2.0)
    ranks = allocate_ranks([theta[b] for b in sorted(theta)], budget, 2, 32)
    rank_pattern = {name: ranks[block_of(name)] for name in modules}
    allocated = synchronized()
    model = get_peft_model(base, AiraMoeConfig(r=8, num_A=2, num_B=3, target_modules=TARGETS, rank_pattern=rank_pattern,
                                               use_awsvd_init=True, task_type="CAUSAL_LM"))
    injected = synchronized()
    apply_awsvd_init(adapted_layers(model, "default"), stats)
    done = synchronized()
    return {"model": shape, "calibration_batches": batches, "batch": batch, "seq": seq,
            "calibration_s": round(calibrated - started, 2), "allocation_s": round(allocated - calibrated, 3),
            "awsvd_s": round(done - injected, 2), "total_s": round(done - started - (injected - allocated), 2),
            "ranks": ranks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-3.2-3b,llama-3.1-8b",
                        help="shapes, each optionally with another vocabulary size: llama-3.2-3b:49152")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--checkpointing", default="off,on", help="off, on, or both (off,on)")
    parser.add_argument("--batch", default="8", help="batch sizes, ascending (e.g. 8,16,32): larger ones are skipped "
                        "after the first that runs out of memory, so the last record that fits is the largest batch")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--init-costs", default="", help="model shapes whose one-time costs to time (e.g. llama-3.1-8b)")
    parser.add_argument("--calibration-batches", type=int, default=100)
    parser.add_argument("--budget", type=int, default=128, help="rank budget of the one-time allocation")
    parser.add_argument("--autocast", action="store_true", help="run forward and loss under bf16 autocast, as the "
                        "HF Trainer (hence LLaMA-Factory) does with `bf16: true`; adapter matmuls then run in bf16 for every variant")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="after timing, profile one more step "
                        "of each variant: GPU busy time, kernel launches and the TOP operators by GPU time")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the output, not speed")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.seq, args.steps, args.warmup = "smoke", "1,2", 32, 2, 1
        args.init_costs, args.calibration_batches, args.budget = "smoke", 2, 8
    batches = [int(b) for b in args.batch.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import peft
    import transformers

    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "records": [],
        "one_time_costs": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def save(key: str, entry: dict) -> None:
        print(json.dumps(entry), flush=True)
        result[key].append(entry)
        args.output.write_text(json.dumps(result, indent=2))

    for shape in filter(None, args.init_costs.split(",")):
        save("one_time_costs", one_time_costs(shape, device, dtype, args.calibration_batches, batches[0], args.seq,
                                              args.budget))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for shape in filter(None, args.models.split(",")):
        for checkpointing in args.checkpointing.split(","):
            for variant in args.variants.split(","):
                for batch in batches:
                    record = {"model": shape, "variant": variant, "num_A": VARIANTS[variant][1],
                              "num_B": VARIANTS[variant][2], "gradient_checkpointing": checkpointing == "on",
                              "batch": batch, "seq": args.seq, "autocast": args.autocast}
                    record.update(measure_variant(shape, variant, device, dtype, batch, args, checkpointing == "on"))
                    save("records", record)
                    if record.get("out_of_memory"):
                        break


if __name__ == "__main__":
    main()
