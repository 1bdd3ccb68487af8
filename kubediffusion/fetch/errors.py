"""What can go wrong while filling a cache, and whether a retry can help.

    FetchError            exit 1 (retry) unless ``permanent``: network failures, 5xx, 408, 429
    ├── RefusedError      exit 2: the download policy refused a URL, a redirect, a size
    │   └── AddressRefused        an address in a blocked range (checked when connecting)
    └── ArchiveError      exit 2: broken, truncated or not-a-pipeline archive
        └── UnsafeArchiveError  exit 2: a member would escape the destination or break a limit

The message of each is written to the termination log and shown in the ImageModel's status, so it
says what was refused and why, never what a refused host answered or which internal address a
name resolved to.
"""

from __future__ import annotations


class FetchError(RuntimeError):
    """A download or source failure with a message meant for the ImageModel's status.

    ``permanent``: retrying cannot help (404, not an archive, unsafe archive); fetch-model then exits
    with EXIT_PERMANENT and the Job's podFailurePolicy fails the Job at once instead of backing off.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class RefusedError(FetchError):
    """The download policy refused a URL, redirect or address (the same answer every time)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class AddressRefused(RefusedError):
    """An address (given, resolved or connected to) is in a range the download policy blocks."""


class ArchiveError(FetchError):
    """The archive is broken, truncated, of an unknown format, or holds no diffusers pipeline."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class UnsafeArchiveError(ArchiveError):
    """A member would write or link outside the destination, or the archive breaks a limit."""
