#!/usr/bin/env bash
# One device-tool call of the CLI benchmark (benchmarks/cli_benchmark.py) on the GPU machine:
#   bash benchmarks/cli_benchmark_gpu.sh speed-3b     # 3B shape: lora, aira basic / full, each without and with Liger
#   bash benchmarks/cli_benchmark_gpu.sh speed-more   # 3B standard +-Liger; 8B shape lora / basic / full with Liger
#   bash benchmarks/cli_benchmark_gpu.sh qlora-8gib   # 8B shape, 4-bit base, batch 1 x 1024, checkpointing, 8 GiB cap
#   bash benchmarks/cli_benchmark_gpu.sh qlora-8gib-low-memory   # the same as the recipes' LOW_MEMORY=1 runs it
#   bash benchmarks/cli_benchmark_gpu.sh sharded      # 3B shape, full mode from saved weights: plain, ZeRO-3, FSDP
#                                                     # (one process each; carry .whl_deepspeed/ for ZeRO-3)
# Carry .whl/ (LLaMA-Factory's wheel set and liger-kernel) and .gpu_assets/ (site/: bitsandbytes with
# only its CUDA 13 library; tokenizer/: SmolLM2's; data/: the prepared GSM8K training split).
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh
export PYTHONPATH="$PWD/.gpu_assets/site:${PYTHONPATH}"
common=(--dataset gsm8k_train --output "$OUT/cli_benchmark.jsonl")
if [[ -d .whl_deepspeed ]]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl_deepspeed/*.whl
fi
case "${1:?speed-3b, speed-more, qlora-8gib, qlora-8gib-low-memory or sharded}" in
  speed-3b)
    python3 benchmarks/cli_benchmark.py --model llama-3.2-3b --runs lora,aira_basic,aira_full --liger both \
      --steps 30 --warmup 8 "${common[@]}" ;;
  speed-more)
    python3 benchmarks/cli_benchmark.py --model llama-3.2-3b --runs aira_standard --liger both --steps 30 --warmup 8 "${common[@]}"
    python3 benchmarks/cli_benchmark.py --model llama-3.1-8b --runs lora,aira_basic,aira_full --liger on \
      --steps 25 --warmup 8 "${common[@]}" ;;
  qlora-8gib)
    python3 benchmarks/cli_benchmark.py --model llama-3.1-8b --runs lora,aira_basic,aira_standard,aira_full --liger off \
      --quantization 4 --checkpointing --cap-gib 8 --batch 1 --steps 12 --warmup 4 --variant _4bit_b1 "${common[@]}" ;;
  qlora-8gib-low-memory)
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 benchmarks/cli_benchmark.py --model llama-3.1-8b \
      --runs aira_full,aira_basic,aira_standard --liger off --quantization 4 --checkpointing --cap-gib 8 --batch 1 \
      --steps 12 --warmup 4 --variant _4bit_b1_low_memory "${common[@]}" ;;
  sharded)
    sharded=(--model llama-3.2-3b --runs aira_full --liger off --checkpointing --batch 2 --steps 12 --warmup 4)
    python3 benchmarks/cli_benchmark.py "${sharded[@]}" --saved-weights --variant _saved "${common[@]}"
    python3 benchmarks/cli_benchmark.py "${sharded[@]}" --deepspeed examples/deepspeed/ds_z3_config.json \
      --variant _zero3 "${common[@]}"
    python3 benchmarks/cli_benchmark.py "${sharded[@]}" --fsdp examples/accelerate/fsdp_config.yaml \
      --variant _fsdp "${common[@]}" ;;
esac
mkdir -p "$OUT/logs"
(cd /tmp/bench && find . \( -name log.txt -o -name train.yaml \) -exec cp --parents {} "$OUT/logs/" \;)
