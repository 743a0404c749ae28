# shellcheck shell=bash
# Sourced by the GPU scripts on the device machine (no network): installs the carried wheel set of
# LLaMA-Factory (.whl/) into /tmp/site, puts this checkout's package on the path and installs the
# activation hook (aira_moe.pth), so that worker processes started by torchrun get it too.
: "${OUT:?set OUT to the results folder}"
# a later call on the same warm machine need not carry .whl/ again: /tmp/site is still installed then.
# --upgrade: without it pip keeps an existing /tmp/site/bin (left by wheels installed there before, the
# scoring set say) and silently leaves llamafactory-cli out.
if [[ -d .whl ]]; then
    python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
if [[ ! -d /tmp/site/llamafactory || ! -x /tmp/site/bin/llamafactory-cli ]]; then
    echo "gpu_setup.sh: carry .whl/ (no wheel set here, and /tmp/site lacks llamafactory or bin/llamafactory-cli)" >&2
    exit 1
fi
export PYTHONPATH="/tmp/site:$PWD/src" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
export DISABLE_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cp src/aira_moe.pth "$(python3 -c 'import site; print(site.getsitepackages()[0])')/"

# Log every GPU's used memory twice a second into $1 until the returned PID is killed (in its own session, so
# that it also outlives the call of a detached study).
gpu_memory_logger() {
    setsid nohup nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$1" 2>/dev/null < /dev/null &
    echo $!
}
