#!/usr/bin/env bash
# AIRA-MoE recipe: finance (FinEval-en), basic mode.
# Settings: examples/aira_moe/finance.yaml. Overrides and hardware: scripts/aira_moe/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=launch.sh
source "$(dirname "$0")/launch.sh"
aira_resolve finance 2
aira_train

# --- Evaluation: uncomment to score the adapter once training has finished (on node 0) --------
# if aira_evaluates; then
#     aira-moe eval --model "$MODEL" --adapter "$OUTPUT_DIR" --template "$TEMPLATE" "${EVAL_EXTRA[@]}" \
#         --task fineval --output "$OUTPUT_DIR/eval_{task}.json"
# fi
