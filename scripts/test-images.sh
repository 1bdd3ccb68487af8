#!/usr/bin/env bash
# The images tier: builds both container images and runs them for real (tests/images), with podman.
#
#   scripts/test-images.sh [pytest args]
#
# Installs podman, runc and debootstrap from Debian packages if missing; keeps podman's configuration,
# image storage and the downloads under $KUBEDIFFUSION_CACHE (the machine's /etc/containers is left
# alone); makes local base images once (scripts/images/base.sh: Debian with Python, and that plus
# torch, cached by content), builds Dockerfile.operator and Dockerfile.inference on them with
# scripts/images/build.sh (the release workflow's build script) and runs tests/images: the images
# started as the chart and the operator start them, the openai client through the router to the tiny
# model. Prints build times, image sizes and the cache's disk use; the size budgets are tests.
# Behind a TLS-intercepting proxy, set KUBEDIFFUSION_CA_BUNDLE (default: $PIP_CERT or $SSL_CERT_FILE).
source "$(dirname "$0")/env.sh"
cd "$REPO_ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1

start=$(date +%s)
ensure_venv dev,inference          # pytest and the openai client (the tests' side)
bash tools/build-binaries.sh       # helm: the tests run the pods the chart renders
source scripts/images/podman.sh
ensure_podman
ca_bundle="${KUBEDIFFUSION_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-}}}"
if [ -n "$ca_bundle" ]; then export KUBEDIFFUSION_CA_BUNDLE="$ca_bundle"; fi
echo "==> tools ready ($(( $(date +%s) - start ))s)"

base_start=$(date +%s)
python_base="$(bash scripts/images/base.sh python)"
torch_base="$(bash scripts/images/base.sh torch)"
base_seconds=$(( $(date +%s) - base_start ))
echo "==> base images ready in ${base_seconds}s: $python_base, $torch_base"

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
bash scripts/images/build.sh --engine podman --python-image "$python_base" --torch-image "$torch_base" \
    --report "$report" operator inference
export KUBEDIFFUSION_OPERATOR_IMAGE KUBEDIFFUSION_INFERENCE_IMAGE
KUBEDIFFUSION_OPERATOR_IMAGE="localhost/$(awk '$1 == "operator" {print $2}' "$report")"
KUBEDIFFUSION_INFERENCE_IMAGE="localhost/$(awk '$1 == "inference" {print $2}' "$report")"

echo "==> pytest tests/images"
set +e
pytest -p no:cacheprovider -ra -m images tests/images "$@"
rc=$?
set -e

echo "==> images"
size() { podman image inspect --format '{{.Size}}' "$1"; }
printf '%-52s %8s %14s %8s\n' IMAGE SIZE "ON ITS BASE" BUILD
while IFS=$'\t' read -r _ image seconds; do
    image="localhost/$image"
    base="$(podman image inspect --format '{{index .Labels "org.opencontainers.image.base.name"}}' "$image")"
    added="$(( $(size "$image") - $(size "$base") ))"
    printf '%-52s %8s %14s %7ss\n' "$image" "$(size "$image" | numfmt --to=si)" \
        "+$(numfmt --to=si "$added")" "$seconds"
done <"$report"
for base in "$python_base" "$torch_base"; do
    printf '%-52s %8s %14s %8s\n' "$base" "$(size "$base" | numfmt --to=si)" "" "(base)"
done
echo "==> base images ${base_seconds}s; cache: $(du -sh "$KUBEDIFFUSION_CACHE/podman" | cut -f1) podman storage," \
     "$(du -sh "$KUBEDIFFUSION_CACHE/images" | cut -f1) downloads"
echo "==> images tier finished in $(( $(date +%s) - start ))s"
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a broken tier, not a pass" >&2
    exit 1
fi
exit "$rc"
