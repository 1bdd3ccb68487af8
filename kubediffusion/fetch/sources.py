"""Where weights come from. Each fetcher fills an empty staging directory and returns the revision.

Heavy or optional libraries are imported only when their source is used: huggingface_hub (Hugging
Face), boto3 (s3, untested here: no S3 in the test environment), the tiny writer (torch + diffusers).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import httpx

from kubediffusion.fetch.archive import archive_suffix, extract, model_root

CHUNK = 1 << 20
DOWNLOAD_PREFIX = ".download-"  # archives are downloaded next to the staging directory


class FetchError(RuntimeError):
    """A download or source failure with a message meant for the ImageModel's status.

    ``permanent``: retrying cannot help (404, not an archive, unsafe archive); fetch-model then exits
    with EXIT_PERMANENT and the Job's podFailurePolicy fails the Job at once instead of backing off.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def fetch_huggingface(repo: str, revision: str, staging: Path) -> str:
    """Snapshot ``repo`` at ``revision`` (token from $HF_TOKEN); returns the resolved commit sha."""
    from huggingface_hub import HfApi, snapshot_download

    token = os.environ.get("HF_TOKEN") or None
    try:
        sha = HfApi(token=token).model_info(repo, revision=revision).sha or revision
        snapshot_download(repo_id=repo, revision=sha, local_dir=str(staging), token=token)
    except Exception as exc:  # huggingface_hub raises many types; all mean "download failed"
        raise FetchError(f"Hugging Face {repo}@{revision}: {type(exc).__name__}: {exc}") from exc
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping
    return sha


def _download(url: str, into: Path) -> str:
    """Stream ``url`` to the file ``into``; returns ``sha256:<hex>`` of the bytes."""
    digest = hashlib.sha256()
    timeout = httpx.Timeout(30.0, read=300.0)
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
            if response.status_code != 200:
                transient = response.status_code in (408, 429) or response.status_code >= 500
                raise FetchError(
                    f"GET {url}: HTTP {response.status_code} {response.reason_phrase}", permanent=not transient
                )
            with into.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    return f"sha256:{digest.hexdigest()}"


def fetch_http(url: str, staging: Path) -> str:
    """Download an archive next to ``staging`` (same volume, not /tmp) and extract it safely."""
    name = urlparse(url).path.rsplit("/", 1)[-1]
    if archive_suffix(name) is None:
        raise FetchError(f"{url}: not a .tar.gz, .tgz, .tar or .zip archive", permanent=True)
    fd, tmp = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, dir=staging.parent)
    os.close(fd)
    try:
        revision = _download(url, Path(tmp))
        unpacked = staging / ".unpacked"
        unpacked.mkdir()
        try:
            extract(Path(tmp), unpacked, name=name)
        except (ValueError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:  # incl. UnsafeArchiveError
            raise FetchError(f"{url}: {exc}", permanent=True) from exc
        root = model_root(unpacked)
        for entry in root.iterdir():
            entry.rename(staging / entry.name)
        shutil.rmtree(unpacked, ignore_errors=True)
        return revision
    finally:
        Path(tmp).unlink(missing_ok=True)


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
