#!/usr/bin/env bash
# Builds the container images: Dockerfile.operator (operator + router) and Dockerfile.inference.
# The one build script: scripts/test-images.sh (podman, local base images), the release workflow
# (docker buildx, amd64 + arm64, --push) and the kind quickstart (docker, --tag dev) all call it,
# so every build gets the same build arguments.
#
#   scripts/images/build.sh [options] [operator] [inference]      (both when none is named)
#
#   --engine podman|docker   podman: `podman build` (one platform, the machine's);
#                            docker: `docker buildx build` (default: podman if installed, else docker)
#   --repository PREFIX      image names are PREFIX/kubediffusion and PREFIX/kubediffusion-inference
#                            (default: none, i.e. kubediffusion and kubediffusion-inference)
#   --tag TAG                image tag (default: the package version in pyproject.toml, which is
#                            also the chart's appVersion: the chart's default tags)
#   --python-image REF       base image of Dockerfile.operator (default: its pinned PYTHON_IMAGE)
#   --torch-image REF        base image of Dockerfile.inference (default: its pinned TORCH_IMAGE)
#   --platform LIST          docker only: buildx platforms, e.g. linux/amd64,linux/arm64
#   --push                   docker only: push (with provenance and SBOM attestations) instead of
#                            loading into the local engine; needed for more than one platform
#   --metadata-dir DIR       docker only: buildx metadata (pushed digests) as DIR/<component>.json
#   --ca-bundle FILE         podman only: a CA bundle mounted over the build containers' Debian CA
#                            bundle (behind a TLS-intercepting proxy; default: $KUBEDIFFUSION_CA_BUNDLE)
#   --report FILE            append one line per image: component, image, build seconds
#
# Build arguments passed to both Dockerfiles: VERSION (pyproject.toml), REVISION (git HEAD) and
# SOURCE (the repository URL; on GitHub Actions the workflow's repository), plus the base images
# only when given.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"

engine="" repository="" tag="" python_image="" torch_image="" platform="" push=false
metadata_dir="" ca_bundle="${KUBEDIFFUSION_CA_BUNDLE:-}" report=""
components=()
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --repository) repository="${2%/}"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --python-image) python_image="$2"; shift 2 ;;
        --torch-image) torch_image="$2"; shift 2 ;;
        --platform) platform="$2"; shift 2 ;;
        --push) push=true; shift ;;
        --metadata-dir) metadata_dir="$2"; shift 2 ;;
        --ca-bundle) ca_bundle="$2"; shift 2 ;;
        --report) report="$2"; shift 2 ;;
        operator|inference) components+=("$1"); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
    esac
done
[ "${#components[@]}" -gt 0 ] || components=(operator inference)
if [ -z "$engine" ]; then
    if command -v podman >/dev/null; then engine=podman; else engine=docker; fi
fi
case "$engine" in
    podman)
        if [ "$push" = true ] || [ -n "$metadata_dir" ]; then
            echo "build.sh: --push and --metadata-dir need --engine docker (buildx)" >&2; exit 2
        fi ;;
    docker)
        if [ -n "$ca_bundle" ]; then
            echo "build.sh: --ca-bundle is for podman builds on Debian bases only" >&2; exit 2
        fi ;;
    *) echo "build.sh: --engine must be podman or docker" >&2; exit 2 ;;
esac

version="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' pyproject.toml)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
source_url="${GITHUB_SERVER_URL:+$GITHUB_SERVER_URL/${GITHUB_REPOSITORY:-}}"
[ -n "$tag" ] || tag="$version"

build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision")
[ -z "$source_url" ] || build_args+=(--build-arg "SOURCE=$source_url")

image_name() {  # component -> repository[:tag] without the tag
    local name=kubediffusion
    [ "$1" = operator ] || name=kubediffusion-inference
    echo "${repository:+$repository/}$name"
}

for component in "${components[@]}"; do
    image="$(image_name "$component"):$tag"
    args=("${build_args[@]}")
    if [ "$component" = operator ] && [ -n "$python_image" ]; then args+=(--build-arg "PYTHON_IMAGE=$python_image"); fi
    if [ "$component" = inference ] && [ -n "$torch_image" ]; then args+=(--build-arg "TORCH_IMAGE=$torch_image"); fi
    echo "==> building $image (Dockerfile.$component, $engine)"
    start=$(date +%s)
    if [ "$engine" = podman ]; then
        # Host network: the build reaches PyPI like the host does (no bridge, no NAT rules needed).
        extra=(--network=host --layers)
        [ -z "$platform" ] || extra+=(--platform "$platform")
        [ -z "$ca_bundle" ] || extra+=(--volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")
        podman build "${extra[@]}" "${args[@]}" --file "Dockerfile.$component" --tag "$image" .
    else
        extra=()
        [ -z "$platform" ] || extra+=(--platform "$platform")
        if [ "$push" = true ]; then
            extra+=(--push --provenance=mode=max --sbom=true)
        else
            extra+=(--load)
        fi
        if [ -n "$metadata_dir" ]; then
            mkdir -p "$metadata_dir"
            extra+=(--metadata-file "$metadata_dir/$component.json")
        fi
        docker buildx build "${extra[@]}" "${args[@]}" --file "Dockerfile.$component" --tag "$image" .
    fi
    seconds=$(( $(date +%s) - start ))
    echo "==> built $image in ${seconds}s"
    [ -z "$report" ] || printf '%s\t%s\t%s\n' "$component" "$image" "$seconds" >>"$report"
done
