#!/usr/bin/env bash
# Build the binaries of the local test control plane from source, via the Go module proxy:
# kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok, helm.
#
# Each tool has its own Go module under tools/go/<tool>/ (pinned versions, go.sum), so their
# dependency graphs never meet. Binaries land in
#   ${KUBEDIFFUSION_CACHE:-$HOME/.cache/kubediffusion}/bin/<tool>-<version>/<binary>
# and a binary that already exists is not rebuilt: a second run does nothing.
# ${KUBEDIFFUSION_CACHE}/bin/current/ holds symlinks to the versions pinned here; that is the
# directory the tests use (tests/support/controlplane.py), printed at the end.
#
# GOCACHE and GOMODCACHE stay at Go's defaults (outside the repo) so they persist between runs.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KUBEDIFFUSION_CACHE:-$HOME/.cache/kubediffusion}"
BIN_ROOT="$CACHE/bin"
GO_PARALLEL="${GO_PARALLEL:-2}"

export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

if ! command -v go >/dev/null 2>&1; then
    echo "error: go is not on PATH (Go >= 1.26 is needed to build the test binaries)" >&2
    exit 1
fi

# The pinned versions are the ones in tools/go/<tool>/go.mod (the single source of truth).
module_version() { (cd "$REPO_ROOT/tools/go/$1" && go list -m -f '{{.Version}}' "$2"); }
KUBE_VERSION="$(module_version kubernetes k8s.io/kubernetes)"
ETCD_VERSION="$(module_version etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(module_version kwok sigs.k8s.io/kwok)"
HELM_VERSION="$(module_version helm helm.sh/helm/v3)"

kube_minor="${KUBE_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
    kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

built=0
# build TOOL VERSION BINARY PACKAGE [EXTRA_LDFLAGS]
build() {
    local tool="$1" version="$2" binary="$3" pkg="$4" extra="${5:-}"
    local dir="$BIN_ROOT/$tool-$version"
    local out="$dir/$binary"
    mkdir -p "$dir" "$BIN_ROOT/current"
    ln -sfn "../$tool-$version/$binary" "$BIN_ROOT/current/$binary"
    if [ -x "$out" ]; then
        echo "ok       $tool-$version/$binary (already built)"
        return
    fi
    echo "building $tool-$version/$binary from $pkg ..."
    local start=$SECONDS
    (
        cd "$REPO_ROOT/tools/go/$tool"
        go build -p "$GO_PARALLEL" -trimpath -ldflags="-s -w$extra" -o "$out.tmp.$$" "$pkg"
    )
    mv -f "$out.tmp.$$" "$out"
    echo "built    $tool-$version/$binary in $((SECONDS - start))s"
    built=$((built + 1))
}

total_start=$SECONDS
build etcd "$ETCD_VERSION" etcd go.etcd.io/etcd/server/v3
build kwok "$KWOK_VERSION" kwok sigs.k8s.io/kwok/cmd/kwok \
    " -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBE_VERSION"
build helm "$HELM_VERSION" helm helm.sh/helm/v3/cmd/helm \
    " -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for binary in kube-apiserver kube-controller-manager kube-scheduler; do
    build kubernetes "$KUBE_VERSION" "$binary" "k8s.io/kubernetes/cmd/$binary" "$kube_ldflags"
done

echo "built $built binaries in $((SECONDS - total_start))s"
echo "$BIN_ROOT/current"
