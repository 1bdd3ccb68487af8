"""podman from the tests: start, inspect and always remove containers.

podman's configuration comes from the environment scripts/test-images.sh sets (CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF, CONTAINERS_REGISTRIES_CONF, under the project's cache), so the tests see
exactly the images that script built.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.waiting import WaitTimeout, wait_for


class PodmanError(RuntimeError):
    pass


@dataclass
class Container:
    podman: Podman
    name: str

    def inspect(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.podman.run("container", "inspect", self.name).stdout)[0]
        return result

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def exit_code(self) -> int:
        return int(self.inspect()["State"]["ExitCode"])

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def ip(self) -> str:
        """The container's address on podman's bridge network (what a pod IP is in a cluster)."""
        address: str = self.inspect()["NetworkSettings"]["IPAddress"]
        assert address, f"{self.name} has no IP address"
        return address

    def url(self, port: int) -> str:
        """http://127.0.0.1:<host port> for a published container port."""
        host = self.podman.run("port", self.name, f"{port}/tcp").stdout.strip().splitlines()[0]
        return f"http://{host.replace('0.0.0.0', '127.0.0.1')}"

    def main_process(self) -> dict[str, str]:
        """/proc/1/status of the container's main process: who it runs as, with what privileges."""
        status = self.podman.run("exec", self.name, "cat", "/proc/1/status").stdout
        return {key: value.strip() for key, _, value in (line.partition(":") for line in status.splitlines())}

    def mount_options(self, path: str) -> list[str]:
        """The options of the mount at ``path``, as the container's main process sees it."""
        for line in self.podman.run("exec", self.name, "cat", "/proc/1/mounts").stdout.splitlines():
            fields = line.split()
            if fields[1] == path:
                return fields[3].split(",")
        raise AssertionError(f"{self.name}: nothing is mounted at {path}")

    def can_write(self, path: str, user: str | None = None) -> bool:
        as_user = ["--user", user] if user is not None else []
        return self.podman.run("exec", *as_user, self.name, "touch", path, check=False).returncode == 0

    def wait_exit(self, timeout: float) -> int:
        wait_for(lambda: not self.running(), timeout=timeout, interval=1, message=f"{self.name} to exit")
        return self.exit_code()

    def wait_http(self, port: int, path: str, timeout: float) -> str:
        """Poll GET path (a probe) until it answers 200; fails with the container's logs."""
        base = self.url(port)

        def ok() -> bool:
            if not self.running():
                raise AssertionError(f"{self.name} exited ({self.exit_code()}):\n{self.logs()[-4000:]}")
            return httpx.get(base + path, timeout=5).status_code == 200

        try:
            wait_for(ok, timeout=timeout, interval=1, message=f"{self.name} GET {path}")
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\n--- {self.name} logs ---\n{self.logs()[-4000:]}") from None
        return base


@dataclass
class Podman:
    """Runs podman; every container it starts is removed by :meth:`remove_all` (the fixture's finalizer)."""

    binary: str = "podman"
    prefix: str = field(default_factory=lambda: f"kd-images-{os.getpid()}")
    started: list[Container] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False
        )  # fmt: skip
        if check and result.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        return result

    def start(self, run_args: list[str], role: str) -> Container:
        container = Container(self, f"{self.prefix}-{next(self._counter)}-{role}")
        self.started.append(container)
        self.run("run", "--detach", "--name", container.name, *run_args)
        return container

    def once(self, run_args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run to completion and remove (a one-off command such as --help)."""
        return self.run("run", "--rm", *run_args, check=False, timeout=timeout)

    def remove_all(self) -> None:
        while self.started:
            self.run("rm", "--force", "--time", "0", self.started.pop().name, check=False)

    def image(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.run("image", "inspect", ref).stdout)[0]
        return result
