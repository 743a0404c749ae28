#!/usr/bin/env bash
# Full mode on 2 GPUs (run on the device machine, nvidia-h200-x2; results land in $OUT):
#   1. statistics + rank allocation + AwSVD on 2 NCCL processes: checksums must match across ranks;
#   2. `llamafactory-cli train` in full mode on 2 GPUs, DDP and DeepSpeed ZeRO-2 (LLaMA-Factory's own
#      torchrun relaunch; the workers import nothing of ours, the start-up hook does);
#   3. the same with ZeRO-3 must be refused with a clear message.
# Needs, in the repository root: .whl/ (LLaMA-Factory's wheel set, deepspeed, hjson) and .gpu_assets/
# (a SmolLM2-135M-shaped config with its tokenizer, and the MedMCQA demo data).
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh

mkdir -p /tmp/ck
torchrun --nproc_per_node 2 --master_port 29601 tests/calibration_worker.py /tmp/ck > "$OUT/checksums.log" 2>&1

write_config() {  # $1 output file, $2 output dir, $3 extra YAML lines
  cat > "$1" <<EOF
model_name_or_path: .gpu_assets/smollm2_shape
train_from_scratch: true
stage: sft
do_train: true
finetuning_type: aira_moe
lora_target: all
num_A: 2
num_B: 3
use_activation_aware: true
use_layer_wise_rank: true
rank_budget: 128
min_rank: 2
max_rank: 32
use_awsvd_init: true
awsvd_collect_steps: 10
dataset: medmcqa_train
dataset_dir: .gpu_assets/data
template: chatml
cutoff_len: 512
per_device_train_batch_size: 8
max_steps: 20
logging_steps: 5
save_steps: 10
learning_rate: 5.0e-4
bf16: true
report_to: none
output_dir: $2
$3
EOF
}

run_train() {  # $1 name, $2 extra YAML lines
  write_config "/tmp/$1.yaml" "/tmp/out_$1" "$2"
  local start=$SECONDS
  FORCE_TORCHRUN=1 NPROC_PER_NODE=2 llamafactory-cli train "/tmp/$1.yaml" > "/tmp/$1.log" 2>&1 || true
  echo "$1 $((SECONDS - start))" >> /tmp/wall.txt
}

run_train ddp ""
run_train zero2 "deepspeed: examples/deepspeed/ds_z2_config.json"
run_train zero3 "deepspeed: examples/deepspeed/ds_z3_config.json"

python3 - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
walls = dict(line.split() for line in Path("/tmp/wall.txt").read_text().splitlines())
checksums = [Path(f"/tmp/ck/checksum_rank{rank}.txt").read_text() for rank in (0, 1)]
summary = {"awsvd_checksums": checksums, "checksums_equal": checksums[0] == checksums[1]}
for name in ("ddp", "zero2", "zero3"):
    log = Path(f"/tmp/{name}.log").read_text()
    results = Path(f"/tmp/out_{name}/train_results.json")
    allocation = Path(f"/tmp/out_{name}/rank_allocation.json")
    summary[name] = {
        "wall_s": int(walls[name]),
        "trained": results.is_file(),
        "train_results": json.loads(results.read_text()) if results.is_file() else None,
        "world_size_2": "world size: 2" in log,
        "calibration": re.findall(r"Calibration: .*", log)[:1],
        "awsvd": re.findall(r"AwSVD initialised .*", log)[:1],
        "ranks": json.loads(allocation.read_text())["ranks"] if allocation.is_file() else None,
        "zero3_message": re.findall(r"DeepSpeed ZeRO-3 partitions.*", log)[:1],
    }
    (out / f"{name}_tail.log").write_text(log[-6000:])
(out / "multi_gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
