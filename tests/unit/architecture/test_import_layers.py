"""The import-layer contract in pyproject.toml really fails on an import across layers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "kubediffusion", tmp_path / "kubediffusion", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_layers(tmp_path: Path) -> None:
    result = lint_imports(copy_of_the_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_router_importing_the_operator_fails_with_a_message(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    with (root / "kubediffusion/router/balancer.py").open("a") as module:
        module.write("\nimport kubediffusion.operator.reconcile  # noqa: E402\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "kubediffusion.router is not allowed to import kubediffusion.operator" in result.stdout


def test_the_contract_package_importing_a_component_fails(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    with (root / "kubediffusion/imagemodel/names.py").open("a") as module:
        module.write("\nimport kubediffusion.router.routing  # noqa: E402\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "kubediffusion.imagemodel is not allowed to import kubediffusion.router" in result.stdout


def test_a_new_top_level_module_must_be_placed_in_a_layer(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    (root / "kubediffusion/stray.py").write_text('"""Not in any layer."""\n')
    result = lint_imports(root)
    assert result.returncode != 0
    assert "kubediffusion.stray" in result.stdout
