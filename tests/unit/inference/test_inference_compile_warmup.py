"""Batch buckets, the warm-up's shapes, the compile cache (save/load, atomically) and freezing the shapes
after warm-up, with a fake compiler: no torch, no GPU."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from kubediffusion.inference import compilecache
from kubediffusion.inference.backend import BackendDescription
from kubediffusion.inference.compilecache import CompileCache, freeze_shapes
from kubediffusion.inference.shapes import batch_buckets, bucket_for, padded
from kubediffusion.inference.warmup import warm_guidances, warm_sizes
from tests.unit.inference.fakes import FakeBackend, settings_for
from tests.unit.inference.test_inference_app import serve

pytestmark = pytest.mark.timeout(30)


def test_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(4) == (1, 2, 4)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert [bucket_for(n, (1, 2, 4)) for n in range(1, 7)] == [1, 2, 4, 4, 5, 6]  # too big: as is
    assert bucket_for(3, ()) == 3
    assert padded(["a", "b", "c"], 4) == ["a", "b", "c", "c"]
    assert padded(["a"], 1) == ["a"]


def test_warm_up_shapes_per_device_and_compile() -> None:
    cpu = BackendDescription(pipeline_class="P", device="cpu", dtype="float32")
    assert warm_sizes(cpu, 8) == (1,)
    assert warm_sizes(dataclasses.replace(cpu, device="cuda"), 6) == (1, 2, 4, 6)  # cuDNN autotuning per shape
    assert warm_sizes(dataclasses.replace(cpu, device="cuda", compiled=True), 8) == (1, 2, 4, 8)
    assert warm_guidances(cpu, 7.5) == (7.5,)
    assert warm_guidances(dataclasses.replace(cpu, device="cuda"), 7.5) == (7.5, 0.0)  # CFG, and none
    assert warm_guidances(dataclasses.replace(cpu, device="cuda"), 0.0) == (0.0, 5.0)  # a Turbo default


class FakeCompiler:
    def __init__(self, artifacts: bytes = b"kernels") -> None:
        self.artifacts = artifacts
        self.events: list[tuple[str, Any]] = []

    def load_cache_artifacts(self, data: bytes) -> object | None:
        self.events.append(("load", data))
        return object() if data else None  # torch answers None when it could not load anything

    def save_cache_artifacts(self) -> tuple[bytes, object] | None:
        self.events.append(("save", None))
        return (self.artifacts, object()) if self.artifacts else None

    def set_stance(self, stance: str) -> None:
        self.events.append(("stance", stance))


def test_the_cache_is_saved_atomically_and_loaded_back(tmp_path: Path) -> None:
    compiler = FakeCompiler(b"\x00compiled\xff")
    cache = CompileCache(tmp_path / "cache", compiler, version="2.9.0+cu128")
    assert cache.load() is False  # nothing saved yet
    assert cache.save() is True
    assert cache.path == tmp_path / "cache" / "compile-cache-torch-2.9.0+cu128.bin"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path.name]  # no temporary file left
    assert cache.load() is True
    assert compiler.events[-1] == ("load", b"\x00compiled\xff")
    other = CompileCache(tmp_path / "cache", FakeCompiler(), version="2.10.0")
    assert other.load() is False  # another torch: another file


def test_cache_failures_cost_time_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeCompiler):
        def load_cache_artifacts(self, data: bytes) -> object | None:
            raise RuntimeError("corrupt")

    cache = CompileCache(tmp_path, Broken(), version="2")
    assert cache.save() is True
    with caplog.at_level(logging.WARNING):
        assert cache.load() is False
    assert "could not load the compile cache" in caplog.text
    assert CompileCache(tmp_path, FakeCompiler(b""), version="3").save() is False  # nothing compiled
    (tmp_path / "compile-cache-torch-4.bin").write_bytes(b"")
    assert CompileCache(tmp_path, FakeCompiler(), version="4").load() is False  # torch loaded nothing
    assert CompileCache(None, FakeCompiler(), version="2").save() is False  # no directory: off
    assert CompileCache(tmp_path, object(), version="2").load() is False  # a torch without the API
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert CompileCache(blocked / "sub", FakeCompiler(), version="2").save() is False  # unwritable


def test_freezing_shapes_sets_the_eager_stance_when_torch_can() -> None:
    compiler = FakeCompiler()
    assert freeze_shapes(compiler) is True
    assert compiler.events == [("stance", "eager_on_recompile")]
    assert freeze_shapes(object()) is False


class CompiledBackend(FakeBackend):
    def __init__(self, compiler: FakeCompiler) -> None:
        super().__init__()
        self.compiler = compiler

    @property
    def description(self) -> BackendDescription:
        return dataclasses.replace(super().description, device="cuda", compiled=True)

    def generate(self, jobs: Any, on_step: Any = None) -> Any:
        self.compiler.events.append(("generate", (sum(len(job.seeds) for job in jobs), jobs[0].params.guidance)))
        return super().generate(jobs, on_step)


async def test_a_compiled_server_loads_the_cache_warms_each_bucket_then_saves_and_freezes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiler = FakeCompiler()
    monkeypatch.setattr(compilecache, "_torch_compiler", lambda: compiler)
    cache_dir = tmp_path / "compile-cache"
    settings = settings_for(
        tmp_path, compile=True, max_batch_size=8, compile_cache_dir=cache_dir, defaults={"size": "64x64", "guidance": 5}
    )
    CompileCache(cache_dir, FakeCompiler(b"earlier")).save()  # the name the server will read (torch version)
    async with serve(settings, lambda _: CompiledBackend(compiler)):
        pass
    assert compiler.events == [
        ("load", b"earlier"),
        *(("generate", (n, guidance)) for guidance in (5.0, 0.0) for n in (1, 2, 4, 8)),  # with and without CFG
        ("save", None),
        ("stance", "eager_on_recompile"),
    ]
