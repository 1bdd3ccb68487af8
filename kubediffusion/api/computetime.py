"""The compute time a model pod spent on a request, as it tells the router (docs/observability.md).

A JSON answer carries it in the header ``X-KubeDiffusion-Compute-Seconds: 1.234``; an event stream (whose
headers go out before the work) in a comment line ``: x-kubediffusion-compute-seconds 1.234`` followed by
a blank line, before the stream ends. Seconds as a decimal number; absent, unreadable, negative or over a
day reads as 0. The router bills it (GPU-seconds) and passes neither on to the client.
"""

from __future__ import annotations

import math

COMPUTE_SECONDS_HEADER = "x-kubediffusion-compute-seconds"
COMPUTE_SECONDS_COMMENT = b": " + COMPUTE_SECONDS_HEADER.encode()
MAX_COMPUTE_SECONDS = 86_400.0  # a day of one GPU per request: anything above is a pod's bug


def header_value(seconds: float) -> str:
    """``seconds`` as the header's value (microseconds: a stub engine's batch takes less than a millisecond)."""
    return f"{seconds:.6f}"


def comment(seconds: float) -> bytes:
    """The event-stream comment (a whole event: the line and its blank line) that reports ``seconds``."""
    return COMPUTE_SECONDS_COMMENT + b" " + header_value(seconds).encode() + b"\n\n"


def compute_seconds(value: str | bytes | None) -> float:
    """Reported compute seconds; 0 when absent, unreadable, negative or absurd."""
    if value is None:
        return 0.0
    try:
        seconds = float(value.strip())
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and 0 <= seconds <= MAX_COMPUTE_SECONDS else 0.0


def comment_seconds(event: bytes) -> float | None:
    """The compute seconds of a stream's compute comment; None for any other event."""
    if not event.startswith(COMPUTE_SECONDS_COMMENT):
        return None
    return compute_seconds(event[len(COMPUTE_SECONDS_COMMENT) :].split(b"\n", 1)[0])
