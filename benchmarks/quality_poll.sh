#!/usr/bin/env bash
# Wait for a study that `DETACH=... quality_gpu.sh` started: return after $1 seconds (default 540) or as soon as it
# has finished, with its results and log copied to $OUT, so every call brings back what has finished so far
# (a machine lost between calls loses only the runs in flight).
set -euo pipefail
: "${OUT:?set OUT to the results folder}"
dir="${STUDY_DIR:-/tmp/quality}"
pid="$(cat "${dir}/pid")"
# a study that has exited but whose parent has not reaped it yet (a zombie) has finished too
running() { [[ -r "/proc/${pid}/stat" && "$(sed 's/.*) //' "/proc/${pid}/stat" 2>/dev/null | cut -c1)" != Z ]]; }
deadline=$((SECONDS + ${1:-540}))
while running && ((SECONDS < deadline)); do
    sleep 5
done
cp "${dir}/quality.jsonl" "${dir}/log" "$OUT/"
if running; then state="still running"; else state="finished"; fi
# gpu_memory_logger's lines: "index, MiB used"
peak="$(awk -F', *' '{print $NF}' "${dir}/memory" 2>/dev/null | sort -n | tail -1)"
echo "study ${state}: $(wc -l < "${dir}/quality.jsonl") runs in ${dir}/quality.jsonl; peak GPU memory ${peak:-?} MiB"
grep -E "runs to do|eval_loss=|Error" "${dir}/log" | tail -30 || true
