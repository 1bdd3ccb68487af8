"""``kubediffusion fetch-model``: fill a model cache directory once (the ImageModel's cache Job).

    kubediffusion fetch-model --dest /models/model --huggingface REPO [--revision REV]
    kubediffusion fetch-model --dest /models/model --url https://host/model.tar.gz | s3://bucket/prefix
    kubediffusion fetch-model --dest /models/model --tiny [sd|sdxl]
    kubediffusion fetch-model --dest /models/KEY/adapters/NAME --content weights [--file F] --huggingface REPO

``--content weights`` fetches an adapter's or a component's weights into the model's copy (the cache
Job runs one fetch-model per source): an archive must then hold ``--file`` or some .safetensors file
instead of a pipeline, and a Hugging Face repo gives only ``--file`` (and a config.json beside it).

Weights are written into a staging directory next to ``--dest`` and renamed into place only when
complete, with the marker ``.kubediffusion-complete.json`` (source, revision, bytes, completedAt).
``--prune`` removes the other copies next to ``--dest`` but the ``--keep`` ones the pods still read
(a new source goes into a directory of its own beside them: :mod:`kubediffusion.fetch.copies`).
A rerun that finds the marker for the same source does nothing and exits 0. A short JSON summary
(or ``{"error": ...}``) goes to ``--termination-log``, so the operator reads it from the pod's status.
Exit codes: 0 done, 1 failed (worth a retry: network, 5xx), 2 failed permanently (404, refused by the
download policy, broken or unsafe archive, no pipeline in it, no room beside a kept copy: then the
summary's ``reason`` is ``CacheTooSmallForSwap``).
Hugging Face tokens come from ``$HF_TOKEN`` (a secretKeyRef in the Job).

``--url`` downloads follow the download policy (https only, no internal addresses; see ``--help`` and
:mod:`kubediffusion.fetch.policy`) and archives are extracted within limits (:mod:`kubediffusion.fetch.limits`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubediffusion.fetch import copies, options, sources
from kubediffusion.fetch.errors import FetchError
from kubediffusion.fetch.limits import Limits
from kubediffusion.fetch.policy import DownloadPolicy
from kubediffusion.imagemodel.names import CACHE_MARKER as MARKER

EXIT_FAILED = 1  # may succeed on retry (network, 5xx)
SUMMARY_LIMIT = 4000  # characters of the termination message (the kubelet keeps 4096 bytes)
EXIT_PERMANENT = 2  # will not (404, bad or unsafe archive): the Job fails without retrying
log = logging.getLogger("kubediffusion.fetch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubediffusion fetch-model", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", required=True, type=Path, help="directory to fill (e.g. /models/model)")
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--huggingface", metavar="REPO", help="Hugging Face repo id")
    chosen.add_argument("--url", help="http(s) archive URL (.tar.gz/.tgz/.tar/.zip) or s3://bucket/prefix")
    chosen.add_argument("--tiny", nargs="?", const="sd", metavar="KIND", help="the random-weight smoke-test model")
    parser.add_argument("--revision", default="main", help="Hugging Face revision (default main)")
    parser.add_argument(
        "--content",
        choices=["pipeline", "weights"],
        default="pipeline",
        help="what the source holds: a diffusers pipeline (default), or weights (an adapter or component)",
    )
    parser.add_argument(
        "--file", metavar="NAME", help="with --content weights: the .safetensors file the server loads (relative)"
    )
    parser.add_argument("--termination-log", type=Path, help="write a JSON summary here (/dev/termination-log)")
    copies_ = parser.add_argument_group("copies side by side (new weights beside the serving ones)")
    copies_.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("PRUNE"),
        help="remove every other copy next to --dest but the --keep ones (env KD_FETCH_PRUNE)",
    )
    copies_.add_argument(
        "--keep",
        action="append",
        type=Path,
        default=None,
        metavar="DIR",
        help="a copy pods still read: never removed, and the new one must fit beside it (repeatable; env"
        " KD_FETCH_KEEP, comma-separated)",
    )
    options.add_arguments(parser)
    return parser


def _env_bool(name: str) -> bool:
    return os.environ.get(f"KD_FETCH_{name}", "").strip().lower() in ("1", "true", "yes", "on")


def _keep(args: argparse.Namespace) -> list[Path]:
    if args.keep is not None:
        return list(args.keep)
    return [Path(p) for p in os.environ.get("KD_FETCH_KEEP", "").replace(",", " ").split() if p]


def source_id(args: argparse.Namespace) -> str:
    """What the marker records; a rerun with the same id finds its copy complete."""
    if args.huggingface:
        base = f"hf:{args.huggingface}@{args.revision}"
    elif args.url:
        base = f"url:{args.url}"
    else:
        return f"tiny:{args.tiny}"
    return f"{base}#{args.file}" if args.file else base


def _fetcher(args: argparse.Namespace, policy: DownloadPolicy, limits: Limits) -> Callable[[Path], str]:
    file: str | None = args.file
    if args.huggingface:
        return lambda staging: sources.fetch_huggingface(args.huggingface, args.revision, staging, file=file)
    if args.url:
        url: str = args.url
        if url.startswith("s3://"):
            return lambda staging: sources.fetch_s3(url, staging)
        if url.startswith(("http://", "https://")):
            content = args.content
            return lambda staging: sources.fetch_http(
                url, staging, policy=policy, limits=limits, content=content, file=file
            )
        raise FetchError(f"unsupported URL scheme: {url!r} (http, https or s3)", permanent=True)
    kind: str = args.tiny
    return lambda staging: sources.fetch_tiny(kind, staging)


def read_marker(dest: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def fetch(
    dest: Path, source: str, fetcher: Callable[[Path], str], *, prune: bool = False, keep: Sequence[Path] = ()
) -> dict[str, Any]:
    """Fill ``dest`` from ``source`` unless its marker says it already holds it; returns the marker.

    ``prune``: first remove every other copy next to ``dest`` but ``keep`` (:mod:`kubediffusion.fetch.copies`).
    """
    _remove_leftovers(dest)
    if prune:
        copies.prune(dest, keep)
    marker = read_marker(dest)
    if marker is not None and marker.get("source") == source:
        log.info("%s already holds %s (revision %s): nothing to do", dest, source, marker.get("revision"))
        return {**marker, "cached": True}
    copies.check_room(dest, keep)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        with copies.side_by_side(keep):
            revision = fetcher(staging)
        marker = {
            "source": source,
            "revision": revision,
            "bytes": sources.tree_bytes(staging),
            "completedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched %s into %s: %d bytes, revision %s", source, dest, marker["bytes"], revision)
    return {**marker, "cached": False}


def _remove_leftovers(dest: Path) -> None:
    """Staging, swapped-out and download files of an earlier run that was killed (OOM, eviction, preemption).

    Its ``finally`` never ran, so without this every killed attempt would leave a partial copy of the model
    on the volume, and the retry would run out of space. The Job runs one pod at a time (a replacement
    pod starts once the old one is gone), so nothing else is writing these.
    """
    if not dest.parent.is_dir():
        return
    patterns = (f".{dest.name}.staging-*", f".{dest.name}.old-*", f"{sources.DOWNLOAD_PREFIX}*")
    for pattern in patterns:
        for leftover in dest.parent.glob(pattern):
            log.info("removing %s, left by an earlier run that did not finish", leftover)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _swap_into_place(staging: Path, dest: Path) -> None:
    """Replace ``dest`` with ``staging``; readers never see a half-written directory under ``dest``."""
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _fit(summary: dict[str, Any]) -> str:
    """``summary`` as JSON of at most SUMMARY_LIMIT characters: long strings are shortened, never the JSON
    (the operator parses it for the status). The source first (to 200 characters), then the error."""

    def dumps(value: dict[str, Any]) -> str:
        return json.dumps(value, separators=(",", ":"))

    for key, floor in (("source", 200), ("error", 0), ("source", 0)):
        value = summary.get(key)
        if len(dumps(summary)) <= SUMMARY_LIMIT or not isinstance(value, str) or len(value) <= floor:
            continue
        low, high = floor, len(value)  # the longest prefix that fits (escaping makes some characters longer)
        while low < high:
            mid = (low + high + 1) // 2
            if len(dumps({**summary, key: value[:mid] + "..."})) <= SUMMARY_LIMIT:
                low = mid
            else:
                high = mid - 1
        summary = {**summary, key: value[:low] + "..."}
    return dumps(summary)


def _write_summary(path: Path | None, summary: dict[str, Any]) -> None:
    if path is None:
        return
    try:  # the kubelet keeps at most 4 KiB of it
        path.write_text(_fit(summary), encoding="utf-8")
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    policy, limits = options.policy_from(args, parser), options.limits_from(args)
    if args.file is not None and (args.content != "weights" or args.tiny):
        parser.error("--file goes with --content weights and --huggingface or --url")
    if args.file is not None and (args.file.startswith("/") or ".." in Path(args.file).parts):
        parser.error(f"--file must be a relative path inside the source, got {args.file!r}")
    source = source_id(args)
    try:
        summary = fetch(args.dest, source, _fetcher(args, policy, limits), prune=args.prune, keep=_keep(args))
    except Exception as exc:
        message = str(exc) if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}"
        log.error("fetch-model failed: %s", message)
        failed = {"error": message, "source": source}
        if isinstance(exc, copies.CacheTooSmall):
            failed["reason"] = exc.reason  # the operator shows it as the condition's reason
        _write_summary(args.termination_log, failed)
        permanent = isinstance(exc, FetchError) and exc.permanent
        return EXIT_PERMANENT if permanent else EXIT_FAILED
    _write_summary(args.termination_log, summary)
    return 0
