"""Speed and memory through the stock `llamafactory-cli train` path, one run per process, side by side.

Each run is LLaMA-Factory's own `run_exp` on a YAML config (what `llamafactory-cli train` calls),
with one callback added that times the optimizer steps on the GPU clock (synchronised) and reads
the peak allocated memory. Models are real-shaped Llama configs with random weights
(`train_from_scratch`, or a saved random checkpoint for quantised bases, which quantise at load).

    python benchmarks/cli_benchmark.py --model llama-3.2-3b --runs lora,aira_basic,aira_full --liger both \\
        --output results.jsonl

Records (JSON lines): model, run, liger, gradient_checkpointing, quantization, batch, seq,
ms_per_step (median over the timed steps), tokens_per_s, mfu (4 x linear parameters x tokens over
989 TFLOP/s, the H200's dense bf16), peak_mem_gib, cap_gib, loss_first / loss_last, command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from llama_shapes import H200_BF16_FLOPS, LLAMA_SHAPES

# the 3B shape with SmolLM2's 49152-token vocabulary, as the performance issue measured it through the CLI
SHAPES = {**LLAMA_SHAPES, "llama-3.2-3b": {**LLAMA_SHAPES["llama-3.2-3b"], "vocab_size": 49152}}
# The recipes' modes (examples/aira_moe/generality_*.yaml) at LoRA's rank 8 on all linear layers; `floor` is the
# frozen base's own forward and backward (rank 1 on q_proj alone, so the input gradients still run through every
# layer): the step no adapter on all linear layers can go under, which bounds any speed-up over LoRA.
RUNS = {
    "floor": {"finetuning_type": "lora", "lora_target": "q_proj", "lora_rank": 1},
    "lora": {"finetuning_type": "lora"},
    "aira_basic": {"finetuning_type": "aira_moe", "num_A": 2, "num_B": 3},
    "aira_standard": {"finetuning_type": "aira_moe", "num_A": 2, "num_B": 3, "use_activation_aware": True,
                      "awsvd_collect_steps": 8},
    "aira_full": {"finetuning_type": "aira_moe", "num_A": 2, "num_B": 3, "use_activation_aware": True,
                  "use_layer_wise_rank": True, "min_rank": 4, "max_rank": 16, "use_awsvd_init": True,
                  "awsvd_collect_steps": 8},
}
# the recipes' full mode since the second quality round (docs/results.md); `aira_full` keeps `fully`, as measured before
RUNS["aira_full_learned"] = {**RUNS["aira_full"], "collaboration": "learned"}


def model_dir(assets: Path, name: str, saved: bool) -> Path:
    """A folder with the shape's config.json and a tokenizer; with `saved`, random weights too (once)."""
    folder = assets / (f"{name}_weights" if saved else f"{name}_shape")
    if (folder / "config.json").is_file() and (not saved or any(folder.glob("*.safetensors"))):
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[name], max_position_embeddings=4096, torch_dtype="bfloat16")
    folder.mkdir(parents=True, exist_ok=True)
    if saved:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
    else:
        config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets / "tokenizer").save_pretrained(folder)
    return folder


def saved_weights(args: argparse.Namespace) -> bool:
    """Quantised bases quantise saved weights at load; ZeRO-3 runs start from the same saved weights as the plain run
    they are compared with (random init under zero.Init would draw other numbers)."""
    return bool(args.quantization or args.deepspeed or args.saved_weights)


def child_command(args: argparse.Namespace, config_path: Path, record_path: Path) -> tuple[list[str], dict]:
    """The training process: plain, or under ZeRO-3 with a one-process torch.distributed environment (as torchrun
    would give it)."""
    own = ["--model", args.model, "--warmup", str(args.warmup), "--output", "-", "--child", str(config_path), str(record_path)]
    if args.cap_gib:
        own += ["--cap-gib", str(args.cap_gib)]
    if args.profile:
        own += ["--profile", str(args.profile)]
    env = dict(os.environ)
    if args.deepspeed:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    return [sys.executable, __file__, *own], env


def run_config(args: argparse.Namespace, model: Path, run: str, liger: bool, output: Path) -> dict:
    config = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "lora_target": "all", "lora_rank": 8,
        "dataset": args.dataset, "dataset_dir": str(args.data_dir), "template": "chatml", "cutoff_len": args.seq,
        "packing": True, "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
        "max_steps": args.steps, "logging_steps": 5, "learning_rate": 1.0e-4, "bf16": True, "seed": 42,
        "disable_gradient_checkpointing": not args.checkpointing, "enable_liger_kernel": liger,
        "report_to": "none", "output_dir": str(output), "save_strategy": "no", "overwrite_output_dir": True,
        "preprocessing_num_workers": 8, "max_samples": args.max_samples, **RUNS[run],
    }
    if args.quantization:
        config["quantization_bit"] = args.quantization
    elif not saved_weights(args):
        config["train_from_scratch"] = True
    if args.deepspeed:
        config["deepspeed"] = str(args.deepspeed)
    if config.get("use_layer_wise_rank"):
        layers = SHAPES[args.model]["num_hidden_layers"]
        config["rank_budget"] = 8 * layers
    return config


def child(config_path: str, record_path: str, cap_gib: float | None, warmup: int, profile_top: int) -> None:
    """In the training process: cap memory, time the steps, run LLaMA-Factory's run_exp; with `profile_top`, the
    last step runs under torch's profiler (and is left out of the timing)."""
    import torch
    from llamafactory.train.tuner import run_exp
    from speed import profile_summary
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    if cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(cap_gib * 2**30 / total)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []
            self.linear_params = 0
            self.profiler = None
            self.profile: dict | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self.linear_params = sum(
                m.in_features * m.out_features for m in base.modules() if isinstance(m, torch.nn.Linear)
            )
            torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            self.profiler = None
            if profile_top and state.global_step == args.max_steps - 1:
                self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.profiler.__enter__()
            torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - self.started
            if self.profiler is None:
                self.times.append(elapsed)
                return
            self.profiler.__exit__(None, None, None)
            self.profile = {"step_ms": round(1000 * elapsed, 1), **profile_summary(self.profiler, profile_top)}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    timer = StepTimer()
    run_exp(yaml.safe_load(Path(config_path).read_text()), callbacks=[timer])
    timed = timer.times[warmup:]
    Path(record_path).write_text(json.dumps({
        "ms_per_step": 1000 * statistics.median(timed), "steps_timed": len(timed),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30, "linear_params": timer.linear_params,
        "loss_curve": timer.losses, **({"profile": timer.profile} if timer.profile else {}),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), required=True)
    parser.add_argument("--runs", default="lora,aira_basic,aira_standard,aira_full")
    parser.add_argument("--liger", choices=["off", "on", "both"], default="both")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on (LLaMA-Factory's default)")
    parser.add_argument("--quantization", type=int, choices=[4, 8], help="quantization_bit (bitsandbytes), from saved random weights")
    parser.add_argument("--cap-gib", type=float, help="torch.cuda.set_per_process_memory_fraction to this many GiB")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-samples", type=int, default=20000)
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="profile the last step: GPU busy time, "
                        "kernel launches, the TOP operators and kernels by GPU time (the record's `profile`)")
    parser.add_argument("--variant", default="", help="suffix for the record's variant field")
    parser.add_argument("--deepspeed", type=Path, help="DeepSpeed config (ZeRO-3: examples/deepspeed/ds_z3_config.json)")
    parser.add_argument("--saved-weights", action="store_true", help="start from saved random weights (to compare with"
                        " --deepspeed runs) instead of train_from_scratch")
    parser.add_argument("--assets", type=Path, default=Path(".gpu_assets"))
    parser.add_argument("--data-dir", type=Path, default=Path(".gpu_assets/data"))
    parser.add_argument("--dataset", default="medmcqa_train")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.cap_gib, args.warmup, args.profile)
        return
    model = model_dir(args.assets, args.model, saved=saved_weights(args))
    ligers = {"off": [False], "on": [True], "both": [False, True]}[args.liger]
    for run in args.runs.split(","):
        for liger in ligers:
            name = f"{args.model}_{run}_{'liger' if liger else 'plain'}{args.variant}"
            folder = Path("/tmp/bench") / name
            folder.mkdir(parents=True, exist_ok=True)
            config_path, record_path = folder / "train.yaml", folder / "record.json"
            config_path.write_text(yaml.safe_dump(run_config(args, model, run, liger, folder / "out")))
            command, env = child_command(args, config_path, record_path)
            started = time.time()
            with open(folder / "log.txt", "w") as log:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
            record = {
                "model": args.model, "run": run, "variant": f"{run.removeprefix('aira_')}{args.variant}", "liger": liger,
                "gradient_checkpointing": args.checkpointing, "quantization": f"bnb-{args.quantization}bit" if args.quantization else "bf16",
                "batch": args.batch, "seq": args.seq, "cap_gib": args.cap_gib, "wall_s": round(time.time() - started, 1),
                "sharding": "zero3" if args.deepspeed else "none",
                "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                "command": " ".join(["python", "benchmarks/cli_benchmark.py", *sys.argv[1:]]),
            }
            if code == 0 and record_path.is_file():
                measured = json.loads(record_path.read_text())
                tokens = args.batch * args.seq
                seconds = measured["ms_per_step"] / 1000
                record.update(
                    ms_per_step=round(measured["ms_per_step"], 1), tokens_per_s=round(tokens / seconds),
                    mfu=round(4 * measured["linear_params"] * tokens / seconds / H200_BF16_FLOPS, 3),
                    peak_mem_gib=round(measured["peak_mem_gib"], 2), steps_timed=measured["steps_timed"],
                    loss_first=measured["loss_curve"][0] if measured["loss_curve"] else None,
                    loss_last=measured["loss_curve"][-1] if measured["loss_curve"] else None,
                    loss_curve=measured["loss_curve"], **({"profile": measured["profile"]} if "profile" in measured else {}),
                )
            else:
                tail = (folder / "log.txt").read_text(errors="replace")[-1500:]
                record["error"] = "out of memory" if "out of memory" in tail.lower() else tail
            print(json.dumps({k: v for k, v in record.items() if k not in ("loss_curve", "command", "profile")}), flush=True)
            with open(args.output, "a") as out:
                out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
