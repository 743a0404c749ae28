#!/usr/bin/env bash
# AIRA-MoE recipe: medicine (iCliniq + GenMedGPT-5k), full mode, weighting from output activations.
# Settings: examples/aira_moe/medicine.yaml. Overrides and hardware: scripts/aira_moe/README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=launch.sh
source "$(dirname "$0")/launch.sh"
aira_resolve medicine 2
aira_train

# --- Evaluation: uncomment to score the adapter once training has finished (on node 0) --------
# if aira_evaluates; then
#     aira-moe eval --model "$MODEL" --adapter "$OUTPUT_DIR" --template "$TEMPLATE" "${EVAL_EXTRA[@]}" \
#         --task medicine,mmlu_medicine --output "$OUTPUT_DIR/eval_{task}.json"
# fi
