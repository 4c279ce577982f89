#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py, issue 26) as one command on a GPU machine with no network.
#
#   bench/gpu_check.sh --download      # here, with the network: the wheels of bench/gpu_requirements.txt
#                                      # (Python 3.12, x86-64) into bench/gpu_wheels/ (git-ignored, ~55 MB
#                                      # with bitsandbytes, which it drops when they would pass 64 MiB)
#   bench/gpu_check.sh [OPTIONS]       # there: installs those wheels into /tmp/site (no index, no network),
#                                      # runs bench/gpu_check.py OPTIONS; the figures, the log and a copy of
#                                      # bench/RESULTS.md with the new rows go to $OUT (else bench/gpu_check_out/)
#
# The device tool (bench/README.md, "GPU check"): command `bench/gpu_check.sh`, carry ["bench/gpu_wheels"].
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
wheels=${GPU_CHECK_WHEELS:-bench/gpu_wheels}  # the tests may point elsewhere
requirements=bench/gpu_requirements.txt
python=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/site}  # where the wheels go (the tests install them elsewhere)

if [[ "${1:-}" == "--download" ]]; then
    # pip matches manylinux_2_N exactly: name the tags the carried wheels may have (bitsandbytes: 2_24)
    "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$wheels" -r "$requirements"
    # The device takes 64 MiB in all: the wheels and the working tree (tracked and untracked, not ignored).
    # bitsandbytes (item 5 only) is the big one: leave it out, and item 5 is skipped, when it does not fit.
    limit=$((64 * 1024 * 1024))
    tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    total=$(( $(du -cb "$wheels"/*.whl | tail -1 | cut -f1) + tree ))
    echo "the wheels and the working tree: $((total / 1024 / 1024)) MiB of the device's 64 MiB"
    if (( total > limit )) && ls "$wheels"/bitsandbytes-*.whl >/dev/null 2>&1; then
        rm -f "$wheels"/bitsandbytes-*.whl
        echo "bitsandbytes left out: with it they pass 64 MiB; the check will skip item 5 (QLoRA)"
    fi
    exit 0
fi

if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $wheels: run bench/gpu_check.sh --download here first, and carry $wheels" >&2
    exit 2
fi
# --no-deps: the list is closed (tests/test_gpu_check.py); the machine's own torch, transformers,
# accelerate and peft stay the ones that run
# bitsandbytes is optional (item 5): installed when its wheel was carried, else item 5 says it is skipped
listed=$requirements
if ! ls "$wheels"/bitsandbytes-*.whl >/dev/null 2>&1; then
    listed=$(mktemp)
    grep -v '^bitsandbytes' "$requirements" >"$listed"
    echo "bitsandbytes not carried: item 5 (QLoRA) will be skipped" >&2
fi
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    --find-links "$wheels" -r "$listed"
# the sweep's children (`python -m lora_sweep run`, its warm runner, the jobs) inherit the path
export PYTHONPATH=$site:$repo${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

out=${OUT:-$repo/bench/gpu_check_out}
mkdir -p "$out"
cp bench/RESULTS.md "$out/RESULTS.md"  # the rows are appended to this copy: bring it back as bench/RESULTS.md
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$python" bench/gpu_check.py --results "$out/RESULTS.md" --json "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
