#!/usr/bin/env bash
# Installs everything a fresh machine needs and runs the whole test suite: lint, types, every tier.
#   Python env (cached venv), Go-built control plane binaries (cached), ruff, mypy, import layers, pytest,
#   and (with no arguments) the container-images tier (scripts/test-images.sh: podman, needs root).
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1

start=$(date +%s)
ensure_venv dev,inference
echo "==> python env ready ($(( $(date +%s) - start ))s)"

bash tools/build-binaries.sh
echo "==> control plane binaries ready ($(( $(date +%s) - start ))s)"

echo "==> ruff"; ruff check . && ruff format --check .
echo "==> mypy"; mypy
echo "==> import layers"; lint-imports --no-cache
echo "==> pytest"
set +e
pytest -p no:cacheprovider -ra -m "not images" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a broken suite, not a pass" >&2
    exit 1
fi
# The images tier builds both container images first (podman, local Debian bases): the full suite
# runs it; a chosen subset (arguments given) does not.
if [ "$#" -eq 0 ]; then
    echo "==> container images (scripts/test-images.sh)"
    bash scripts/test-images.sh || { images_rc=$?; [ "$rc" -ne 0 ] || rc=$images_rc; }
fi
echo "==> tests finished in $(( $(date +%s) - start ))s total"
exit "$rc"
