"""Test infrastructure: a stand-in for a router's (or a model pod's) ``GET /metrics``, with gauges a test sets.

The autoscaler scrapes every router replica's ``kubediffusion_router_inflight_requests`` and
``kubediffusion_router_held_requests`` (docs/contracts.md). Tests stand a :class:`MetricsStub` on a
loopback address in their own process and point a Pod's status at it (cluster tier), or run this file as
a pod's command under the e2e pod runner, serving the text of ``--file`` (re-read on every request).
"""

from __future__ import annotations

import argparse
import http.server
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

INFLIGHT = "kubediffusion_router_inflight_requests"
HELD = "kubediffusion_router_held_requests"


def router_page(namespace: str, models: Mapping[str, tuple[float, float]]) -> str:
    """A router's gauges: ``models`` maps a model name to (in flight, held)."""
    lines = [f"# TYPE {INFLIGHT} gauge", f"# TYPE {HELD} gauge"]
    for model, (inflight, held) in models.items():
        labels = f'model="{model}",namespace="{namespace}"'
        lines += [f"{INFLIGHT}{{{labels}}} {inflight}", f"{HELD}{{{labels}}} {held}"]
    return "\n".join(lines) + "\n"


def _handler(text: Callable[[], str]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = text().encode() if self.path.split("?")[0] == "/metrics" else b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class MetricsStub:
    """Serves ``self.text`` on ``http://host:port/metrics`` from a thread of the test process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.text = ""
        self._server = http.server.ThreadingHTTPServer((host, port), _handler(lambda: self.text))
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> MetricsStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--file", type=Path, required=True, help="served as /metrics, re-read on each request")
    args = parser.parse_args()

    def text() -> str:
        try:
            return str(args.file.read_text())
        except OSError:
            return ""

    http.server.ThreadingHTTPServer((args.host, args.port), _handler(text)).serve_forever()


if __name__ == "__main__":
    main()
