#!/usr/bin/env bash
# One device-tool call of the CLI benchmark (benchmarks/cli_benchmark.py) on the GPU machine:
#   bash benchmarks/cli_benchmark_gpu.sh speed ARGS...   # cli_benchmark.py from saved random weights, e.g.
#        speed --model llama-3.2-3b --runs lora,aira_basic,aira_standard,aira_full --liger both [--checkpointing]
#   bash benchmarks/cli_benchmark_gpu.sh qlora-8gib   # 8B shape, 4-bit base, batch 1 x 1024, checkpointing, 8 GiB cap
#   bash benchmarks/cli_benchmark_gpu.sh qlora-8gib-low-memory   # the same as the recipes' LOW_MEMORY=1 runs it
#   bash benchmarks/cli_benchmark_gpu.sh sharded      # 3B shape, full mode from saved weights: plain and ZeRO-3
#                                                     # (one process each; carry .whl_deepspeed/)
# Carry .whl/ (LLaMA-Factory's wheel set and liger-kernel) and .gpu_assets/ (site/: bitsandbytes with
# only its CUDA 13 library; tokenizer/: SmolLM2's; data/: the prepared GSM8K training split) in the first
# call; they are installed and copied to /tmp, with the saved random weights beside them, so that later
# calls on the same warm machine carry nothing and do not save the weights again.
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh
assets=/tmp/assets
if [[ -d .gpu_assets ]]; then
    mkdir -p "$assets" && cp -r .gpu_assets/. "$assets/"
fi
export PYTHONPATH="$assets/site:${PYTHONPATH}"
common=(--dataset gsm8k_train --assets "$assets" --data-dir "$assets/data" --output "$OUT/cli_benchmark.jsonl")
if [[ -d .whl_deepspeed ]]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl_deepspeed/*.whl
fi
case "${1:?speed, qlora-8gib, qlora-8gib-low-memory or sharded}" in
  speed)
    python3 benchmarks/cli_benchmark.py --saved-weights --steps 20 --warmup 6 "${@:2}" "${common[@]}" ;;
  qlora-8gib)
    python3 benchmarks/cli_benchmark.py --model llama-3.1-8b --runs lora,aira_basic,aira_standard,aira_full --liger off \
      --quantization 4 --checkpointing --cap-gib 8 --batch 1 --steps 12 --warmup 4 --variant _4bit_b1 "${common[@]}" ;;
  qlora-8gib-low-memory)
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python3 benchmarks/cli_benchmark.py --model llama-3.1-8b \
      --runs aira_full,aira_full_learned,aira_basic,aira_standard --liger off --quantization 4 --checkpointing \
      --cap-gib 8 --batch 1 --steps 12 --warmup 4 --variant _4bit_b1_low_memory "${common[@]}" ;;
  sharded)
    sharded=(--model llama-3.2-3b --runs aira_full --liger off --checkpointing --batch 2 --steps 12 --warmup 4)
    python3 benchmarks/cli_benchmark.py "${sharded[@]}" --saved-weights --variant _saved "${common[@]}"
    python3 benchmarks/cli_benchmark.py "${sharded[@]}" --deepspeed examples/deepspeed/ds_z3_config.json \
      --variant _zero3 "${common[@]}" ;;
esac
mkdir -p "$OUT/logs"
(cd /tmp/bench && find . \( -name log.txt -o -name train.yaml \) -exec cp --parents {} "$OUT/logs/" \;)
