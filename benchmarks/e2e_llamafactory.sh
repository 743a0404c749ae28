#!/usr/bin/env bash
# End to end through the stock `llamafactory-cli train` on one GPU: stock LoRA against aira_moe
# (basic, 2 A x 3 B, same rank) on a Llama-3.2-3B-shaped model with random weights and SmolLM2's
# 49152-token vocabulary, bf16, 8 x 1024 packed tokens a step, 30 steps; with LLaMA-Factory's
# default gradient checkpointing and without. Prints and writes train_samples_per_second per run.
# Needs .whl/ (LLaMA-Factory's wheel set) and .gpu_assets/ (model config + tokenizer, MedMCQA data).
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh

run() {  # $1 name, $2 finetuning_type, $3 disable_gradient_checkpointing
  cat > "/tmp/$1.yaml" <<YAML
model_name_or_path: .gpu_assets/llama32_3b_shape
train_from_scratch: true
stage: sft
do_train: true
finetuning_type: $2
lora_target: all
lora_rank: 8
num_A: 2
num_B: 3
dataset: medmcqa_train
dataset_dir: .gpu_assets/data
template: chatml
cutoff_len: 1024
packing: true
per_device_train_batch_size: 8
max_steps: 30
logging_steps: 10
learning_rate: 1.0e-4
bf16: true
disable_gradient_checkpointing: $3
report_to: none
output_dir: /tmp/out_$1
save_strategy: "no"
YAML
  [ "$2" = lora ] && sed -i '/^num_[AB]:/d' "/tmp/$1.yaml"
  timeout 140 llamafactory-cli train "/tmp/$1.yaml" > "/tmp/$1.log" 2>&1 || echo "$1 failed"
  python3 - "$1" <<'PY'
import json, sys
from pathlib import Path
name = sys.argv[1]
path = Path(f"/tmp/out_{name}/train_results.json")
result = json.loads(path.read_text()) if path.is_file() else {"error": Path(f"/tmp/{name}.log").read_text()[-2000:]}
print(name, json.dumps(result))
with open("/tmp/e2e.jsonl", "a") as out:
    out.write(json.dumps({"run": name, **result}) + "\n")
PY
}

run lora_nogc lora true
run aira_nogc aira_moe true
run lora_gc lora false
run aira_gc aira_moe false
cp /tmp/e2e.jsonl "$OUT/e2e_llamafactory.jsonl"
