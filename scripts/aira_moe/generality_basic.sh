#!/usr/bin/env bash
# AIRA-MoE recipe: general instruction following (dolly-15k), basic mode: CoLA collaboration only, 2 A x 3 B.
# Settings: examples/aira_moe/generality_basic.yaml. Overrides and hardware: scripts/aira_moe/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=launch.sh
source "$(dirname "$0")/launch.sh"
aira_resolve generality_basic 2
aira_train

# --- Evaluation: uncomment to score the adapter once training has finished (on node 0) --------
# if aira_evaluates; then
#     aira-moe eval --model "$MODEL" --adapter "$OUTPUT_DIR" --template "$TEMPLATE" "${EVAL_EXTRA[@]}" \
#         --task mmlu --output "$OUTPUT_DIR/eval_{task}.json"
# fi
