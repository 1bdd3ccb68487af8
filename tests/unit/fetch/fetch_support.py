"""Helpers of the fetch-model tests: local HTTP servers on loopback addresses, archive builders, tree snapshots."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import socket
import ssl
import stat
import tarfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubediffusion.fetch.main import main

# What the tests' local servers need from the download policy: they listen on loopback, over http.
OPT_INS = ("--allow-http", "--allow-network", "127.0.0.1/32")

FAKE_MODEL = {
    "model_index.json": '{"_class_name": "StableDiffusionPipeline"}',
    "unet/config.json": '{"sample_size": 8}',
    "unet/diffusion_pytorch_model.safetensors": "x" * 1000,
}


class Server:
    """Files from ``root`` over http on ``host``, plus redirects, extra headers and canned answers by path.

    ``connections`` counts accepted TCP connections: a refused address must never see one.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.host = host
        self.requests: list[str] = []
        self.request_headers: list[dict[str, str]] = []
        self.connections = 0
        self.redirects: dict[str, tuple[int, str]] = {}  # path -> (status, Location)
        self.headers: dict[str, dict[str, str]] = {}  # path -> extra response headers
        self.answers: dict[str, tuple[int, bytes]] = {}  # path -> (status, body)
        self.streams: dict[str, bytes] = {}  # path -> body sent without a Content-Length
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                server.requests.append(self.path)

            def do_GET(self) -> None:
                server.request_headers.append(dict(self.headers.items()))
                path = self.path
                if path.startswith("/loop/"):  # /loop/N redirects to /loop/N+1, for ever
                    self._redirect(302, f"/loop/{int(path.rsplit('/', 1)[1]) + 1}")
                elif path in server.redirects:
                    self._redirect(*server.redirects[path])
                elif path in server.answers:
                    status, body = server.answers[path]
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif path in server.streams:
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(server.streams[path])
                    self.close_connection = True
                else:
                    super().do_GET()

            def _redirect(self, status: int, location: str) -> None:
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def end_headers(self) -> None:
                for key, value in server.headers.get(self.path, {}).items():
                    self.send_header(key, value)
                super().end_headers()

        class CountingServer(ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                accepted = super().get_request()
                server.connections += 1
                return accepted

        self.httpd = CountingServer((host, 0), functools.partial(Handler, directory=str(root)))
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/{name}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(root: Path, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    root.mkdir(parents=True, exist_ok=True)
    server = Server(root, host, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_tar(path: Path, files: dict[str, str], *, prefix: str = "") -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def run(dest: Path, tmp_path: Path, *source: str) -> tuple[int, dict[str, Any]]:
    log = tmp_path / "termination-log"
    log.unlink(missing_ok=True)
    code = main(["--dest", str(dest), "--termination-log", str(log), *source])
    return code, json.loads(log.read_text())


@dataclass(frozen=True)
class M:
    """One member of a hand-built archive: file, dir, symlink, hardlink, chr, blk or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""


PIPELINE = M("model_index.json", data=b'{"_class_name": "StableDiffusionPipeline"}')
_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_ZIP_MODES = {
    "file": stat.S_IFREG | 0o644,
    "dir": stat.S_IFDIR | 0o755,
    "symlink": stat.S_IFLNK | 0o777,
    "chr": stat.S_IFCHR | 0o644,
    "blk": stat.S_IFBLK | 0o644,
    "fifo": stat.S_IFIFO | 0o644,
    "socket": stat.S_IFSOCK | 0o644,
}


def build(path: Path, members: list[M], fmt: str) -> None:
    """Write ``members`` as they are (no checks, duplicates kept) as ``fmt``: tar, tar.gz or zip."""
    if fmt == "zip":
        with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            warnings.simplefilter("ignore")  # "Duplicate name": on purpose
            for member in members:
                if member.kind == "hardlink":
                    raise ValueError("zip has no hard links")
                name = member.name + "/" if member.kind == "dir" and not member.name.endswith("/") else member.name
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = _ZIP_MODES[member.kind] << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, member.target.encode() if member.kind == "symlink" else member.data)
        return
    with tarfile.open(path, "w:gz" if fmt == "tar.gz" else "w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = _TAR_TYPES[member.kind]
            info.linkname = member.target
            info.mode = 0o755 if member.kind == "dir" else 0o644
            if member.kind == "file":
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)


def snapshot(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, str]]:
    """Every path under ``root`` (but ``skip``) -> (type, sha256 of the contents or the link target)."""
    found: dict[str, tuple[str, str]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            if relative.split("/")[0] in skip:
                continue
            if path.is_symlink():
                found[relative] = ("symlink", os.readlink(path))
            elif path.is_dir():
                found[relative] = ("dir", "")
            else:
                found[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        dirnames[:] = [d for d in dirnames if not (Path(directory) / d).is_symlink()]
    return found


def links_leading_out(dest: Path) -> list[str]:
    """Symlinks under ``dest`` whose resolved target is not inside ``dest``."""
    if not dest.exists():
        return []
    inside = dest.resolve()
    out = []
    for path in dest.rglob("*"):
        if path.is_symlink():
            resolved = path.resolve()
            if resolved != inside and inside not in resolved.parents:
                out.append(f"{path} -> {os.readlink(path)}")
    return out
