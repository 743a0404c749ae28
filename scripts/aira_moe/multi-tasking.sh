#!/usr/bin/env bash
# AIRA-MoE recipe: all domains at once on 4 GPUs, 4 A x 4 B, rank budget 256.
# Settings: examples/aira_moe/multi-tasking.yaml. Overrides and hardware: scripts/aira_moe/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=launch.sh
source "$(dirname "$0")/launch.sh"
aira_resolve multi-tasking 4
aira_train

# --- Evaluation: uncomment to score the adapter once training has finished (on node 0) --------
# if aira_evaluates; then
#     aira-moe eval --model "$MODEL" --adapter "$OUTPUT_DIR" --template "$TEMPLATE" "${EVAL_EXTRA[@]}" \
#         --task mmlu,fineval,gsm8k,medicine,lawbench --output "$OUTPUT_DIR/eval_{task}.json"
# fi
