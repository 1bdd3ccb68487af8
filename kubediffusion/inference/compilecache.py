"""What a compiled pipeline needs around its warm-up (:mod:`.warmup`); imports only the standard library,
so the GPU benchmark uses it as is.

* **load the compile cache** (``compile_cache_dir``) before the warm-up and **save** it after:
  ``torch.compiler.save_cache_artifacts()`` (inductor's kernels, autotuning results) written atomically
  to a file named for the torch version, so a restarted pod compiles from cache (a warm start) and a
  torch upgrade starts a fresh file rather than reading a stale one. Either step failing is logged and
  the server goes on (it only costs time).
* **freeze the shapes**: after the warm-up, ``torch.compiler.set_stance("eager_on_recompile")``, so a
  shape the warm-up did not see (another image size, a job larger than ``max_batch_size``) runs eagerly
  instead of stalling the queue for a compile. Torch versions without it keep compiling new shapes.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _torch_compiler() -> Any:
    """torch's compiler module; None when torch is not loaded (a backend without torch compiled nothing)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "compiler", None)


class CompileCache:
    """torch.compile's cache artifacts in ``directory`` (None: nothing is loaded or saved)."""

    def __init__(self, directory: Path | None, compiler: Any = None, version: str | None = None) -> None:
        self.directory = directory
        self._compiler = compiler
        self._version = version

    @property
    def compiler(self) -> Any:
        if self._compiler is None:
            self._compiler = _torch_compiler()
        return self._compiler

    @property
    def path(self) -> Path | None:
        if self.directory is None:
            return None
        version = self._version or str(getattr(sys.modules.get("torch"), "__version__", "unknown"))
        return self.directory / f"compile-cache-torch-{version.replace('/', '_')}.bin"

    def load(self) -> bool:
        """Load the saved artifacts, if any; whether something was loaded."""
        path = self.path
        if path is None or not hasattr(self.compiler, "load_cache_artifacts") or not path.is_file():
            return False
        try:
            info = self.compiler.load_cache_artifacts(path.read_bytes())
        except Exception as exc:  # a corrupt or foreign file: compile from scratch
            log.warning("could not load the compile cache %s: %s", path, exc)
            return False
        if info is None:  # torch logs why (a bad checksum, nothing in it) and loads nothing
            log.warning("could not load the compile cache %s: torch found nothing to load in it", path)
            return False
        log.info("loaded the compile cache %s", path)
        return True

    def save(self) -> bool:
        """Save the artifacts compiled so far (atomically: a reader never sees half a file)."""
        path = self.path
        if path is None or not hasattr(self.compiler, "save_cache_artifacts"):
            return False
        try:
            saved = self.compiler.save_cache_artifacts()
            if saved is None:
                return False
            data: bytes = saved[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(data)
                os.replace(temporary, path)
            except BaseException:
                os.unlink(temporary)
                raise
        except Exception as exc:
            log.warning("could not save the compile cache to %s: %s", path, exc)
            return False
        log.info("saved the compile cache (%d bytes) to %s", len(data), path)
        return True


def freeze_shapes(compiler: Any = None) -> bool:
    """From now on, run unseen shapes eagerly instead of compiling them (when torch can)."""
    compiler = compiler if compiler is not None else _torch_compiler()
    if compiler is None:
        return False
    if not hasattr(compiler, "set_stance"):
        log.warning("this torch cannot stop recompiling: new shapes will compile on live requests")
        return False
    compiler.set_stance("eager_on_recompile")
    return True
