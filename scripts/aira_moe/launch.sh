# shellcheck shell=bash
# Shared launcher of the AIRA-MoE recipes; sourced by scripts/aira_moe/<recipe>.sh, never run alone.
#
# A recipe's settings live in examples/aira_moe/<recipe>.yaml (one source for both the scripts and
# plain `llamafactory-cli train`); this file resolves the environment overrides and launches the
# stock `llamafactory-cli train`, which starts torchrun itself (FORCE_TORCHRUN=1 whenever more than one
# process is asked for; a single process on a single node runs without torchrun). Variables:
#   GPUS          processes per node (default: the recipe's, or the count in CUDA_VISIBLE_DEVICES)
#   MODEL         base model, hub id or path           TEMPLATE     LLaMA-Factory chat template
#   OUTPUT_DIR    where the adapter and logs go        DATASET_DIR  folder of dataset_info.json
#   DATASET       comma list of registered datasets    LAUNCHER     torchrun (DDP) or deepspeed
#   DS_CONFIG     DeepSpeed config for LAUNCHER=deepspeed (default: ZeRO-2)
#   EXTRA_ARGS    more key=value overrides, e.g. "max_steps=100 per_device_train_batch_size=2"
#   EVAL_ARGS     more `aira-moe eval` options for the evaluation block, e.g. "--limit 200"
#   LIGER         auto (default: Liger kernels when liger-kernel is installed, the `gpu` extra), 1 or 0
#   LOW_MEMORY=1  8 GB GPUs: a 4-bit base (bitsandbytes), batch 1 with the recipe's effective batch kept by
#                 gradient accumulation, and PyTorch's expandable allocator segments (less fragmentation)
#   DRY_RUN=1     print the command and the resolved config, run nothing
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   several machines: passed to LLaMA-Factory's launcher

AIRA_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Resolve every variable of the recipe named by $1 with default process count $2.
aira_resolve() {
    RECIPE="$1"
    CONFIG="${AIRA_REPO}/examples/aira_moe/${RECIPE}.yaml"
    [[ -f "${CONFIG}" ]] || { echo "error: no config ${CONFIG} for recipe ${RECIPE}" >&2; exit 2; }
    local visible_count=""
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        visible_count="$(awk -F, '{print NF}' <<<"${CUDA_VISIBLE_DEVICES}")"
    fi
    GPUS="${GPUS:-${visible_count:-$2}}"
    MODEL="${MODEL:-$(aira_config_value model_name_or_path)}"
    TEMPLATE="${TEMPLATE:-$(aira_config_value template)}"
    OUTPUT_DIR="${OUTPUT_DIR:-${AIRA_REPO}/$(aira_config_value output_dir)}"
    DATASET_DIR="${DATASET_DIR:-${AIRA_REPO}/data}"
    DATASET="${DATASET:-$(aira_config_value dataset)}"
    LAUNCHER="${LAUNCHER:-torchrun}"
    DS_CONFIG="${DS_CONFIG:-${AIRA_REPO}/examples/deepspeed/ds_z2_config.json}"
    if ! [[ "${GPUS}" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: GPUS=${GPUS} is not a positive integer" >&2
        exit 2
    fi
    LIGER="${LIGER:-auto}"
    if [[ "${LIGER}" != "auto" && "${LIGER}" != "1" && "${LIGER}" != "0" ]]; then
        echo "error: LIGER=${LIGER}; allowed: auto, 1, 0" >&2
        exit 2
    fi
    LOW_MEMORY="${LOW_MEMORY:-0}"
    if [[ "${LOW_MEMORY}" != "0" && "${LOW_MEMORY}" != "1" ]]; then
        echo "error: LOW_MEMORY=${LOW_MEMORY}; allowed: 0, 1" >&2
        exit 2
    fi
    if [[ "${LAUNCHER}" != "torchrun" && "${LAUNCHER}" != "deepspeed" ]]; then
        echo "error: LAUNCHER=${LAUNCHER}; allowed: torchrun, deepspeed" >&2
        exit 2
    fi
    # shellcheck disable=SC2034  # used by the recipes' evaluation blocks
    read -r -a EVAL_EXTRA <<<"${EVAL_ARGS:-}"
    export MODEL TEMPLATE OUTPUT_DIR DATASET_DIR
}

# One top-level value of the recipe's YAML (flat `key: value` lines).
aira_config_value() {
    sed -n "s/^$1: *//p" "${CONFIG}" | head -n 1
}

# The overrides appended to `llamafactory-cli train CONFIG` (LLaMA-Factory merges key=value pairs).
aira_overrides() {
    local -a args=(
        "model_name_or_path=${MODEL}" "template=${TEMPLATE}" "output_dir=${OUTPUT_DIR}"
        "dataset_dir=${DATASET_DIR}" "dataset=${DATASET}"
    )
    if [[ "${LAUNCHER}" == "deepspeed" ]]; then
        args+=("deepspeed=${DS_CONFIG}")
    fi
    # Liger's fused kernels: same loss curve, 1.2-1.3 x the tokens/s through the CLI (benchmarks/README.md)
    if [[ "${LIGER}" == "1" ]] || { [[ "${LIGER}" == "auto" ]] && python -c 'import liger_kernel' >/dev/null 2>&1; }; then
        args+=("enable_liger_kernel=true")
    fi
    if [[ "${LOW_MEMORY}" == "1" ]]; then
        local batch accumulation
        batch="$(aira_config_value per_device_train_batch_size)"
        accumulation="$(aira_config_value gradient_accumulation_steps)"
        args+=("quantization_bit=4" "per_device_train_batch_size=1"
               "gradient_accumulation_steps=$(( ${batch:-1} * ${accumulation:-1} ))")
    fi
    read -r -a extra <<<"${EXTRA_ARGS:-}"
    printf '%s\n' "${args[@]}" "${extra[@]}"
}

# The recipes need the project's environment: say how to get it instead of failing half-way.
aira_check_environment() {
    if ! command -v llamafactory-cli >/dev/null 2>&1 || ! python -c 'import omegaconf, yaml, aira_moe' >/dev/null 2>&1; then
        echo "error: llamafactory-cli or the aira_moe package is not in this shell's environment; activate it" \
            "first: source ${AIRA_REPO}/.venv/bin/activate (\`make install\` creates it)" >&2
        exit 2
    fi
}

# Whether the recipe's evaluation block runs: not on a dry run, and on one node only (the first).
aira_evaluates() {
    [[ "${DRY_RUN:-0}" != "1" && "${NODE_RANK:-0}" == "0" ]]
}

# Launch training (or, with DRY_RUN=1, print what would run and the merged config).
aira_train() {
    aira_check_environment
    local -a overrides
    mapfile -t overrides < <(aira_overrides)
    local launch="NPROC_PER_NODE=${GPUS}"
    export NPROC_PER_NODE="${GPUS}"
    if [[ "${LOW_MEMORY}" == "1" ]]; then
        export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
        launch="PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF} ${launch}"
    fi
    if (( GPUS > 1 || ${NNODES:-1} > 1 )); then
        export FORCE_TORCHRUN=1
        launch="FORCE_TORCHRUN=1 ${launch}"
    fi
    echo "recipe ${RECIPE}: ${GPUS} process(es) per node x ${NNODES:-1} node(s), ${LAUNCHER}"
    echo "+ ${launch} llamafactory-cli train ${CONFIG} ${overrides[*]}"
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        echo "--- resolved config ---"
        python -c 'import sys, yaml; from omegaconf import OmegaConf as O
print(yaml.safe_dump(O.to_container(O.merge(O.load(sys.argv[1]), O.from_cli(sys.argv[2:]))), sort_keys=False), end="")' \
            "${CONFIG}" "${overrides[@]}"
        return 0
    fi
    llamafactory-cli train "${CONFIG}" "${overrides[@]}"
}
