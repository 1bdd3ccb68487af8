# Sourced by the other scripts: where caches live, and the Python environment.
# The venv and Go binaries live outside the repo, keyed by what they are built from,
# so a fresh clone on the same machine reuses them and a change rebuilds them.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KUBEDIFFUSION_CACHE="${KUBEDIFFUSION_CACHE:-$HOME/.cache/kubediffusion}"
mkdir -p "$KUBEDIFFUSION_CACHE"

# ensure_venv EXTRAS: create (once per pyproject.toml content + extras) and activate a venv.
ensure_venv() {
    local extras="$1"
    local key
    # Keyed on the declared dependencies only, so editing tool config does not reinstall torch.
    key="$( (python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print(p["dependencies"], p.get("optional-dependencies"))' "$REPO_ROOT/pyproject.toml"; echo "$extras"; python3 --version) | sha256sum | cut -c1-16)"
    local venv="$KUBEDIFFUSION_CACHE/venv-$key"
    if [ ! -f "$venv/.complete" ]; then
        echo "==> creating Python environment $venv (extras: $extras)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --upgrade pip
        "$venv/bin/pip" install --quiet -e "$REPO_ROOT[$extras]"
        touch "$venv/.complete"
    fi
    # Editable install points at this checkout (a fresh clone lives elsewhere); cheap to redo.
    "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$REPO_ROOT" >"$KUBEDIFFUSION_CACHE/editable-install.log" 2>&1 \
        || { cat "$KUBEDIFFUSION_CACHE/editable-install.log" >&2; return 1; }
    export VIRTUAL_ENV="$venv"
    export PATH="$venv/bin:$PATH"
}
