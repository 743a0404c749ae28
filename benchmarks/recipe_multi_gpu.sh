#!/usr/bin/env bash
# A recipe really distributed over 2 GPUs (device machine nvidia-h200-x2), launched by its own script:
# scripts/aira_moe/generality_full.sh (full mode; the domain recipes run the basic level) on FinEval-en, on a
# Llama-3.2-3B-shaped model with random weights
# (SmolLM2's 49152-token tokenizer, hence the chatml template), first with torchrun (DDP), then with
# DeepSpeed ZeRO-2, MAX_STEPS optimizer steps each at the recipe's batch (4 x 4 accumulation per GPU).
# Writes $OUT/recipe_multi_gpu.json: throughput, peak memory per GPU (nvidia-smi), allocation, losses.
# Needs .whl/ (wheel set incl. deepspeed), .gpu_assets/llama32_3b_shape and data/fineval_en_train.json.
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh
MAX_STEPS="${MAX_STEPS:-30}"

for launcher in torchrun deepspeed; do
    logger_pid=$(gpu_memory_logger "/tmp/mem_${launcher}.csv")
    start=$SECONDS
    GPUS=2 LAUNCHER="${launcher}" MODEL="$PWD/.gpu_assets/llama32_3b_shape" TEMPLATE=chatml \
        OUTPUT_DIR="/tmp/recipe_${launcher}" DATASET_DIR="$PWD/data" DATASET=fineval_en_train \
        EXTRA_ARGS="train_from_scratch=true max_steps=${MAX_STEPS} save_steps=${MAX_STEPS} logging_steps=5" \
        bash scripts/aira_moe/generality_full.sh > "/tmp/recipe_${launcher}.log" 2>&1 || echo "${launcher} failed"
    echo "${launcher} $((SECONDS - start))" >> /tmp/recipe_wall.txt
    kill "${logger_pid}"
done

python3 - "$OUT" "$MAX_STEPS" <<'PY'
import json, re, subprocess, sys
from pathlib import Path
out, steps = Path(sys.argv[1]), int(sys.argv[2])
walls = dict(line.split() for line in Path("/tmp/recipe_wall.txt").read_text().splitlines())
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.split("\n")[0]
summary = {"recipe": "generality_full on fineval_en_train", "model": "Llama-3.2-3B shape, random weights, vocab 49152", "gpu": gpu, "max_steps": steps,
           "command": "MAX_STEPS=%d bash benchmarks/recipe_multi_gpu.sh" % steps}
for launcher in ("torchrun", "deepspeed"):
    folder = Path(f"/tmp/recipe_{launcher}")
    log = Path(f"/tmp/recipe_{launcher}.log").read_text()
    peak = {}
    for line in Path(f"/tmp/mem_{launcher}.csv").read_text().splitlines():
        index, used = (int(x) for x in line.split(","))
        peak[index] = max(peak.get(index, 0), used)
    results = folder / "train_results.json"
    history = [json.loads(l) for l in (folder / "trainer_log.jsonl").read_text().splitlines()] if (folder / "trainer_log.jsonl").is_file() else []
    allocation = folder / "rank_allocation.json"
    summary[launcher] = {
        "trained": results.is_file(),
        "wall_s_including_startup_and_calibration": int(walls[launcher]),
        "train_results": json.loads(results.read_text()) if results.is_file() else None,
        "peak_memory_used_gib_per_gpu": {str(k): round(v / 1024, 2) for k, v in sorted(peak.items())},
        "world_size_2": "world size: 2" in log.lower(),
        "losses": [(h.get("current_steps"), h.get("loss")) for h in history if "loss" in h],
        "ranks": json.loads(allocation.read_text())["ranks"] if allocation.is_file() else None,
        "calibration": re.findall(r"Calibration: .*", log)[:1],
        "awsvd": re.findall(r"AwSVD initialised .*", log)[:1],
        "log_tail": log[-3000:],
    }
(out / "recipe_multi_gpu.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "log_tail"}) for k, v in summary.items()}, indent=1))
PY
