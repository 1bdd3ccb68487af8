# shellcheck shell=bash
# Sourced by scripts/test-images.sh (after scripts/env.sh): podman with a configuration of its own.
#
# Installs podman, runc and debootstrap from Debian packages if missing, then points podman at files
# under $KUBEDIFFUSION_CACHE/podman only (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF,
# CONTAINERS_REGISTRIES_CONF): image storage, runtime state and CNI networks live there, and the
# machine's /etc/containers is never read for them nor written. Rootful (we are root on CI machines);
# runc with the cgroupfs manager (no systemd here), no default ulimits (the machine's hard limits are
# lower than podman's defaults), and no registry to search: every image is local or fully qualified.

ensure_podman() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> apt-get install ${missing[*]}"
        if [ "$(id -u)" -ne 0 ]; then
            echo "installing ${missing[*]} needs root (apt-get)" >&2
            return 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc debootstrap >/dev/null
    fi

    PODMAN_HOME="$KUBEDIFFUSION_CACHE/podman"
    mkdir -p "$PODMAN_HOME/storage" "$PODMAN_HOME/run" "$PODMAN_HOME/tmp" "$PODMAN_HOME/cni"
    cat >"$PODMAN_HOME/containers.conf" <<CONF
# Written by scripts/images/podman.sh: podman for this project only.
[containers]
default_ulimits = []
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "$PODMAN_HOME/tmp"
[network]
network_backend = "cni"
network_config_dir = "$PODMAN_HOME/cni"
CONF
    cat >"$PODMAN_HOME/storage.conf" <<CONF
# Written by scripts/images/podman.sh.
[storage]
driver = "overlay"
graphroot = "$PODMAN_HOME/storage"
runroot = "$PODMAN_HOME/run"
CONF
    cat >"$PODMAN_HOME/registries.conf" <<CONF
# Written by scripts/images/podman.sh: no unqualified-search registries, so a short name never
# silently resolves to a public registry.
unqualified-search-registries = []
CONF
    export CONTAINERS_CONF="$PODMAN_HOME/containers.conf"
    export CONTAINERS_STORAGE_CONF="$PODMAN_HOME/storage.conf"
    export CONTAINERS_REGISTRIES_CONF="$PODMAN_HOME/registries.conf"
}
