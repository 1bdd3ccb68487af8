"""Dockerfile.operator and Dockerfile.inference read as a list of stages (no Docker needed)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

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


def external_bases(dockerfile: Dockerfile) -> list[str]:
    """The images the stages start from, other stages left out."""
    names = {s.name for s in dockerfile.stages}
    return [s.base for s in dockerfile.stages if s.base not in names]


def build_instructions(dockerfile: Dockerfile) -> list[tuple[str, str, str]]:
    """(stage, instruction, arguments) of every stage before the runtime stage, in build order."""
    return [(s.name, ins, args) for s in dockerfile.stages[:-1] for ins, args in s.instructions]
