#!/usr/bin/env bash
# The GPU benchmark in one command, on a bare GPU machine with only PyTorch and transformers installed:
#
#   bench/gpu.sh [--smoke] [--wheels DIR] [--out DIR] [--budget-s S] [--compile-mode MODE]
#
# It installs what else it needs (diffusers, pydantic, Pillow, ...) from a wheel folder (default
# bench/wheels; nothing is downloaded there) when they are missing, then runs bench/bench_gpu_run.py:
# each variant in its own process with a hard deadline, JSON written as each finishes, the whole run
# under 8 minutes (--budget-s, default 450). --smoke: tiny shapes on CPU in well under a minute.
#
# Prepare the wheel folder on a machine with network access (not committed; match the GPU machine's
# Python, here 3.11, and platform; pure-Python wheels need no --platform):
#
#   pip download --no-deps -d bench/wheels diffusers huggingface_hub safetensors importlib_metadata zipp \
#       pydantic annotated_types typing_inspection typing_extensions
#   pip download --no-deps -d bench/wheels --only-binary=:all: --platform manylinux2014_x86_64 \
#       --python-version 3.11 pydantic_core pillow
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
wheels="$here/wheels"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if ! "$python" -c "import diffusers, pydantic, PIL" 2>/dev/null; then
    if [ ! -d "$wheels" ]; then
        echo "diffusers/pydantic/Pillow are missing and there is no wheel folder at $wheels (see the top of $0)" >&2
        exit 2
    fi
    "$python" -m pip install --quiet --no-index --find-links "$wheels" diffusers pydantic pillow
fi
exec "$python" "$here/bench_gpu_run.py" "${args[@]}"
