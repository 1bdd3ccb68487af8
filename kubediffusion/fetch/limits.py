"""How much an archive may write: bytes, expansion ratio, members, path length and depth.

Defaults, and why:

- ``max_bytes``: the cache volume's size, which the cache Job passes (``--max-bytes 20Gi``); when it
  is not given, the free space of the volume at the time of the download. Whatever the limit, the
  extraction is also refused up front when the volume has less free space than the archive declares.
- ``max_ratio`` 100: diffusers weights (fp16/bf16 safetensors) barely compress (1-1.5x), text-heavy
  archives (tokenizers, configs) reach ~10-20x; a single deflate layer reaches ~1000x and bzip2/xz
  far more, so 100x sits well above every legitimate model and well below a bomb. The first
  ``RATIO_GRACE_BYTES`` are free, so a small archive of very compressible JSON is never refused.
- ``max_members`` 10,000: a diffusers repository has tens of files (a Hugging Face snapshot with its
  blobs a few hundred); the limit also stops a header loop before it eats memory.
- ``max_path_length`` 1024 bytes and ``max_depth`` 32: a snapshot path is ~100 bytes and 4 deep; a
  component is at most NAME_MAX (255 bytes) whatever the limits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

RATIO_GRACE_BYTES = 16 << 20
NAME_MAX = 255
_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kMGTPE]i?|Ki)?\s*$")


def parse_quantity(text: str) -> int:
    """Bytes from a Kubernetes quantity (``20Gi``, ``1.5G``, ``500M``) or a plain number of bytes."""
    match = _QUANTITY.match(text)
    if match is None or (match.group(2) or "") not in _SUFFIXES:
        raise ValueError(f"{text!r} is not a size (bytes, or a quantity such as 20Gi or 500M)")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"{text!r} is not a size") from exc
    return int(number * _SUFFIXES[match.group(2) or ""])


@dataclass(frozen=True)
class Limits:
    max_bytes: int | None = None  # None: the free space of the volume when the download starts
    max_ratio: float = 100.0
    max_members: int = 10_000
    max_path_length: int = 1024
    max_depth: int = 32

    def with_max_bytes(self, max_bytes: int) -> Limits:
        return Limits(max_bytes, self.max_ratio, self.max_members, self.max_path_length, self.max_depth)

    def download_limit(self, max_bytes: int) -> int:
        """The most an archive download may be: its contents plus per-member tar headers and padding."""
        return max_bytes + 2048 * self.max_members + (1 << 20)

    def check_total(self, total: int, archive_bytes: int, max_bytes: int) -> None:
        """Raise ``ValueError`` (with the reason) when ``total`` extracted bytes break a limit."""
        if total > max_bytes:
            raise ValueError(
                f"the archive would extract {total} bytes, more than the limit of {max_bytes} (--max-bytes)"
            )
        if total > RATIO_GRACE_BYTES and total > self.max_ratio * max(archive_bytes, 1):
            ratio = total / max(archive_bytes, 1)
            raise ValueError(
                f"the archive expands {archive_bytes} bytes into {total} ({ratio:.0f}x, limit {self.max_ratio:g}x,"
                " --max-ratio): refused as a decompression bomb"
            )
