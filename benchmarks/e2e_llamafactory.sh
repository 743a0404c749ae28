#!/usr/bin/env bash
# End to end through the stock `llamafactory-cli train` on one GPU: stock LoRA against aira_moe
# (basic, 2 A x 3 B, same rank) with its matmuls in bf16 (default) and in fp32 (as LoRA computes),
# on a Llama-3.2-3B-shaped model with random weights and SmolLM2's 49152-token vocabulary, bf16,
# 8 x 1024 packed tokens a step, STEPS steps (default 30), same seed and data order for every run;
# without gradient checkpointing and with LLaMA-Factory's default. Writes $OUT/e2e_llamafactory.jsonl:
# train_samples_per_second and the loss every 5 steps per run.
# Needs .whl/ (LLaMA-Factory's wheel set) and .gpu_assets/ (model config + tokenizer, MedMCQA data).
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh
STEPS="${STEPS:-30}"
AIRA=$'finetuning_type: aira_moe\nnum_A: 2\nnum_B: 3'

run() {  # $1 name, $2 disable_gradient_checkpointing, $3 method-specific YAML lines
  cat > "/tmp/$1.yaml" <<YAML
model_name_or_path: .gpu_assets/llama32_3b_shape
train_from_scratch: true
stage: sft
do_train: true
$3
lora_target: all
lora_rank: 8
dataset: medmcqa_train
dataset_dir: .gpu_assets/data
template: chatml
cutoff_len: 1024
packing: true
per_device_train_batch_size: 8
max_steps: ${STEPS}
logging_steps: 5
learning_rate: 1.0e-4
bf16: true
seed: 42
disable_gradient_checkpointing: $2
report_to: none
output_dir: /tmp/out_$1
save_strategy: "no"
YAML
  timeout $((STEPS * 2 + 120)) llamafactory-cli train "/tmp/$1.yaml" > "/tmp/$1.log" 2>&1 || echo "$1 failed"
  python3 - "$1" <<'PY'
import json, sys
from pathlib import Path
name = sys.argv[1]
folder = Path(f"/tmp/out_{name}")
path = folder / "train_results.json"
result = json.loads(path.read_text()) if path.is_file() else {"error": Path(f"/tmp/{name}.log").read_text()[-2000:]}
history = folder / "trainer_log.jsonl"
if history.is_file():
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    result["loss_curve"] = [[r["current_steps"], r["loss"]] for r in rows if "loss" in r]
print(name, json.dumps({k: v for k, v in result.items() if k != "loss_curve"}))
with open("/tmp/e2e.jsonl", "a") as out:
    out.write(json.dumps({"run": name, **result}) + "\n")
PY
}

for checkpointing in nogc gc; do
  disable=$([ "${checkpointing}" = nogc ] && echo true || echo false)
  run "lora_${checkpointing}" "${disable}" "finetuning_type: lora"
  run "aira_${checkpointing}" "${disable}" "${AIRA}"
  run "aira_fp32_${checkpointing}" "${disable}" "${AIRA}"$'\nadapter_compute_dtype: parameter'
done
cp /tmp/e2e.jsonl "$OUT/e2e_llamafactory.jsonl"
