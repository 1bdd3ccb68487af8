"""crds/imagemodel.yaml is the one source of the CRD; the chart's template is its mirror."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import yaml

from tests.unit.chart.helm_cli import CRD_SOURCE, REPO_ROOT, Helm, Manifest, by_kind, one


def test_chart_crd_template_is_in_sync_with_crds_folder() -> None:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "tools" / "sync-crd.sh"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"run tools/sync-crd.sh\n{result.stdout}{result.stderr}"


def test_rendered_crd_equals_the_source_plus_the_keep_annotation(default_docs: list[Manifest]) -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    rendered = copy.deepcopy(one(default_docs, "CustomResourceDefinition"))
    annotations = rendered["metadata"].pop("annotations")
    assert annotations == {"helm.sh/resource-policy": "keep"}
    assert rendered == source


def test_crd_can_be_left_to_someone_else(helm: Helm) -> None:
    assert not by_kind(helm.template({"crds": {"enabled": False}}), "CustomResourceDefinition")


SCRIPT = REPO_ROOT / "tools" / "sync-crd.sh"
CRD_HEAD = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n"


def _sync(tmp_path: Path, source_text: str) -> subprocess.CompletedProcess[str]:
    source, target = tmp_path / "crd.yaml", tmp_path / "out.yaml"
    source.write_text(source_text)
    env = {**os.environ, "SYNC_CRD_SOURCE": str(source), "SYNC_CRD_TARGET": str(target)}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, check=False)


def test_sync_adds_keep_to_existing_annotations(tmp_path: Path) -> None:
    text = CRD_HEAD + "  name: x.example.io\n  annotations:\n    owner: team-a\nspec: {}\n"
    assert _sync(tmp_path, text).returncode == 0
    body = "\n".join((tmp_path / "out.yaml").read_text().splitlines()[2:-1])
    assert yaml.safe_load(body)["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", "owner": "team-a"}


def test_sync_refuses_template_braces_and_inline_annotations(tmp_path: Path) -> None:
    result = _sync(tmp_path, CRD_HEAD + "  name: x.example.io\nspec:\n  description: '{{ oops }}'\n")
    assert result.returncode != 0 and "{{" in result.stderr
    result = _sync(tmp_path, CRD_HEAD + "  name: x.example.io\n  annotations: {a: b}\nspec: {}\n")
    assert result.returncode != 0 and "block mapping" in result.stderr
