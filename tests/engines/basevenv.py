"""A venv with the base install of this repository only: ``pip install -e .``, no extras, so no torch,
diffusers, Pillow or psutil. Created once in the project cache (``$KUBEDIFFUSION_CACHE/venv-base-<key>``,
the key made of the declared base dependencies and the Python version, as scripts/env.sh keys the main
venv), so a later session only re-points the editable install at this checkout (seconds); pip's cache
makes even a first creation quick. A file lock keeps two sessions from building it at once."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from kubediffusion.local import cache_dir

REPO = Path(__file__).resolve().parents[2]
NOT_IN_BASE = ("torch", "diffusers", "PIL", "psutil", "transformers", "numpy")


@dataclass(frozen=True)
class BaseVenv:
    root: Path
    seconds: float  # what ensure_base_venv took in this session (cold: created; warm: re-pointed)
    created: bool

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def kubediffusion(self) -> Path:
        return self.root / "bin" / "kubediffusion"


def venv_key() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    text = f"{sorted(project['dependencies'])}|{sys.version_info[:3]}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pip(venv: Path, *args: str) -> None:
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
        check=True,
        timeout=900,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )


def ensure_base_venv() -> BaseVenv:
    started = time.monotonic()
    root = cache_dir() / f"venv-base-{venv_key()}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        created = not (root / ".complete").exists()
        if created:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True, timeout=300)
            _pip(root, "setuptools>=77")  # the editable re-install below builds without isolation
            _pip(root, "-e", str(REPO))
            (root / ".complete").touch()
        # The editable install points at the checkout it was made from; this one may be elsewhere.
        _pip(root, "--no-deps", "--no-build-isolation", "-e", str(REPO))
    return BaseVenv(root, time.monotonic() - started, created)
