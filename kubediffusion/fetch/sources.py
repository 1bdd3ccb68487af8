"""Where weights come from. Each fetcher fills an empty staging directory and returns the revision.

Heavy or optional libraries are imported only when their source is used: huggingface_hub (Hugging
Face), boto3 (s3, untested here: no S3 in the test environment), the tiny writer (torch + diffusers).
Only the http(s) source goes through the download policy: the Hugging Face and S3 clients talk to
endpoints the operator sets, not to a URL an ImageModel names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from kubediffusion.fetch.archive import extract
from kubediffusion.fetch.download import download
from kubediffusion.fetch.errors import FetchError as FetchError
from kubediffusion.fetch.layout import WEIGHTS_SUFFIX, Content
from kubediffusion.fetch.limits import Limits
from kubediffusion.fetch.policy import DownloadPolicy

DOWNLOAD_PREFIX = ".download-"  # archives are downloaded next to the staging directory


def fetch_huggingface(repo: str, revision: str, staging: Path, *, file: str | None = None) -> str:
    """Snapshot ``repo`` at ``revision`` (token from $HF_TOKEN); returns the resolved commit sha.

    ``file``: only that file (and a ``config.json`` beside it, a component's architecture): one weight
    file of a repo that holds several (ByteDance/SDXL-Lightning has a dozen checkpoints).
    """
    from huggingface_hub import HfApi, snapshot_download

    token = os.environ.get("HF_TOKEN") or None
    allow = None if file is None else [file, str(PurePosixPath(file).parent / "config.json").removeprefix("./")]
    try:
        sha = HfApi(token=token).model_info(repo, revision=revision).sha or revision
        snapshot_download(repo_id=repo, revision=sha, local_dir=str(staging), token=token, allow_patterns=allow)
    except Exception as exc:  # huggingface_hub raises many types; all mean "download failed"
        raise FetchError(f"Hugging Face {repo}@{revision}: {type(exc).__name__}: {exc}") from exc
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping
    return sha


def fetch_http(
    url: str,
    staging: Path,
    *,
    policy: DownloadPolicy | None = None,
    limits: Limits | None = None,
    content: Content = "pipeline",
    file: str | None = None,
) -> str:
    """Download an archive next to ``staging`` (same volume, not /tmp) and extract it into ``staging``.

    ``limits.max_bytes`` None: the volume's free space now, before the download. Returns ``sha256:<hex>``.
    ``content``/``file``: what the archive must hold (:func:`kubediffusion.fetch.layout.plan`); weights
    may also be one ``.safetensors`` file (a LoRA as published), saved as ``file`` or under its own name.
    """
    policy, limits = policy or DownloadPolicy(), limits or Limits()
    max_bytes = shutil.disk_usage(staging.parent).free if limits.max_bytes is None else limits.max_bytes
    fd, tmp = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, dir=staging.parent)
    os.close(fd)
    also = (WEIGHTS_SUFFIX,) if content == "weights" else ()
    try:
        got = download(url, Path(tmp), policy=policy, max_bytes=limits.download_limit(max_bytes), also=also)
        if content == "weights" and got.name.lower().endswith(WEIGHTS_SUFFIX):
            _place_weights(Path(tmp), staging, file or got.name)
        else:
            extract(
                Path(tmp), staging, name=got.name, limits=limits.with_max_bytes(max_bytes), content=content, file=file
            )
        return got.revision
    finally:
        Path(tmp).unlink(missing_ok=True)


def _place_weights(downloaded: Path, staging: Path, name: str) -> None:
    """One ``.safetensors`` file downloaded as it is (an adapter): at ``file``, else under its own name."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or name.startswith(".") or "\x00" in name:
        raise FetchError(f"{name!r} is not a file name to save weights under", permanent=True)
    target = staging.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(downloaded, target)


def fetch_s3(url: str, staging: Path) -> str:  # pragma: no cover - no S3 in the test environment
    """Copy every object under ``s3://bucket/prefix`` (credentials from the pod's environment)."""
    import boto3  # type: ignore[import-not-found]

    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    s3 = boto3.client("s3")
    etags: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix) :].lstrip("/")
            if not relative or relative.endswith("/") or ".." in Path(relative).parts:
                continue
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            etags.append(f"{obj['Key']}={obj.get('ETag', '')}")
    if not etags:
        raise FetchError(f"{url}: no objects under that prefix")
    return "etags:" + hashlib.sha256("\n".join(sorted(etags)).encode()).hexdigest()[:16]


def fetch_tiny(kind: str, staging: Path) -> str:
    from kubediffusion.tinymodel import write_tiny_pipeline

    write_tiny_pipeline(staging, kind=kind)
    return f"tiny-{kind}"


def tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
