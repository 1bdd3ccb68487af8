"""Test infrastructure: a Hugging Face Hub stand-in on 127.0.0.1 serving one gated repository.

It answers the calls ``huggingface_hub`` makes for ``model_info`` and ``snapshot_download`` (repo info
at a revision, the recursive tree, HEAD and GET of each file under ``resolve/<commit>/``) from a local
directory, at one fixed commit, and only with ``Authorization: Bearer <token>`` (401 otherwise, as the
Hub answers for a gated repository); ``requests`` records each of those calls. Anything else the client
asks (telemetry) is a 404. ``HF_ENDPOINT`` points the client at it.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo: str, root: Path, token: str) -> None:
        self.repo, self.root, self.token = repo, root, token
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Authorization) of each repository request
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def _answer(self, request: http.server.BaseHTTPRequestHandler, *, body: bool) -> None:
        auth = request.headers.get("Authorization") or ""
        path = unquote(urlsplit(request.path).path)
        api, prefix = f"/api/models/{self.repo}/", f"/{self.repo}/resolve/{COMMIT}/"
        if not path.startswith((api, f"/{self.repo}/")):  # the client's other calls (telemetry, ...)
            return _send(request, 404, b'{"error": "not found"}', body=body)
        self.requests.append((request.command, path, auth))
        if auth != f"Bearer {self.token}":
            return _send(request, 401, b'{"error": "Access to this gated repo is restricted"}', body=body)
        if path.startswith(api + "revision/"):
            info = {"id": self.repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self._files()]}
            return _send(request, 200, json.dumps(info).encode(), body=body)
        if path.startswith(api + "tree/"):
            tree = [{"type": "file", "path": f, "size": (self.root / f).stat().st_size, "oid": _sha(self.root / f)}
                    for f in self._files()]  # fmt: skip
            return _send(request, 200, json.dumps(tree).encode(), body=body)
        if path.startswith(prefix) and path[len(prefix) :] in self._files():
            data = (self.root / path[len(prefix) :]).read_bytes()
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT}
            return _send(request, 200, data, body=body, content_type="application/octet-stream", headers=headers)
        return _send(request, 404, b'{"error": "not found"}', body=body)


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()  # an object id, as the Hub lists it


def _send(
    request: http.server.BaseHTTPRequestHandler,
    status: int,
    data: bytes,
    *,
    body: bool,
    content_type: str = "application/json",
    headers: dict[str, Any] | None = None,
) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        request.send_header(name, str(value))
    request.end_headers()
    if body:
        request.wfile.write(data)
