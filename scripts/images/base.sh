#!/usr/bin/env bash
# Local base images for scripts/test-images.sh, made once and cached by content (the public base
# registries are not reachable from every machine that builds; the Dockerfiles' pinned public bases
# stay the defaults for real releases).
#
#   scripts/images/base.sh python   Debian bookworm (debootstrap) with python3, venv and pip: the
#                                   stand-in for Dockerfile.operator's PYTHON_IMAGE
#   scripts/images/base.sh torch    that plus torch from torch-base.txt: the stand-in for
#                                   Dockerfile.inference's TORCH_IMAGE
#
# Prints the image reference (localhost/kubediffusion-base/NAME:KEY) on stdout, progress on stderr.
# KEY hashes the recipe (the functions below, the Debian suite and packages, torch-base.txt and
# Containerfile.torch-base): an unchanged recipe reuses the image, a changed one makes a new image and
# removes the old ones. Needs podman.sh's environment (it sources it) and, for torch, PyPI: torch's
# wheels are downloaded once into $KUBEDIFFUSION_CACHE/images/wheels.
source "$(dirname "$0")/../env.sh"
source "$REPO_ROOT/scripts/images/podman.sh"
ensure_podman

HERE="$REPO_ROOT/scripts/images"
IMAGES_CACHE="$KUBEDIFFUSION_CACHE/images"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
# python-is-python3: the Dockerfiles call `python`, as the official Python and PyTorch images have it.
DEBIAN_PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
CA_BUNDLE="${KUBEDIFFUSION_CA_BUNDLE:-}"

log() { echo "base.sh: $*" >&2; }

# debootstrap a minimal Debian with Python into $1, then drop what an image does not need.
make_python_rootfs() {
    local root="$1"
    debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" --cache-dir="$IMAGES_CACHE/debs" \
        "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$IMAGES_CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$IMAGES_CACHE/debootstrap.log" >&2; return 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
}

python_key() {
    { declare -f make_python_rootfs; echo "$DEBIAN_SUITE $DEBIAN_MIRROR $DEBIAN_PACKAGES"; } | sha256sum | cut -c1-16
}

torch_key() {
    { python_key; cat "$HERE/torch-base.txt" "$HERE/Containerfile.torch-base"; } | sha256sum | cut -c1-16
}

# Remove the other tags of a base repository (older recipes); an image still used by another is kept.
prune_older() {
    local repo="$1" keep="$2" ref
    for ref in $(podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$repo"); do
        [ "$ref" = "$keep" ] || podman rmi "$ref" >/dev/null 2>&1 || true
    done
}

ensure_python_base() {
    local ref
    ref="localhost/kubediffusion-base/python:$(python_key)"
    if ! podman image exists "$ref"; then
        local root="$IMAGES_CACHE/rootfs-$$"
        mkdir -p "$IMAGES_CACHE/debs"
        rm -rf "$root"
        trap 'rm -rf "$root"' EXIT
        log "debootstrap $DEBIAN_SUITE with $DEBIAN_PACKAGES"
        make_python_rootfs "$root"
        tar --numeric-owner -C "$root" -cf - . \
            | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python"]' - "$ref" >/dev/null
        rm -rf "$root"
        trap - EXIT
        prune_older localhost/kubediffusion-base/python "$ref"
        log "made $ref"
    fi
    echo "$ref"
}

ensure_torch_base() {
    local python_ref ref wheels="$IMAGES_CACHE/wheels"
    python_ref="$(ensure_python_base)"
    ref="localhost/kubediffusion-base/torch:$(torch_key)"
    if ! podman image exists "$ref"; then
        mkdir -p "$wheels"
        local mounts=(--volume "$wheels:/wheels" --volume "$HERE/torch-base.txt:/torch-base.txt:ro")
        [ -z "$CA_BUNDLE" ] || mounts+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
        log "downloading torch and its dependencies into $wheels (once; about 3 GB)"
        # In the base itself, so that the wheels match its Python and platform; files already there
        # with the right hash are not downloaded again.
        podman run --rm --network=host "${mounts[@]}" "$python_ref" \
            python -m pip download --quiet --no-cache-dir --disable-pip-version-check --require-hashes \
            --no-deps --only-binary=:all: --dest /wheels -r /torch-base.txt
        log "installing torch into $ref"
        podman build --network=none --volume "$wheels:/wheels:ro" --build-arg "PYTHON_BASE=$python_ref" \
            --file "$HERE/Containerfile.torch-base" --tag "$ref" "$HERE" >&2
        prune_older localhost/kubediffusion-base/torch "$ref"
        log "made $ref"
    fi
    echo "$ref"
}

case "${1:-}" in
    python) ensure_python_base ;;
    torch) ensure_torch_base ;;
    *) echo "usage: scripts/images/base.sh python|torch" >&2; exit 2 ;;
esac
