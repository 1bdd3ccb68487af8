"""What the operator refuses to run for an ImageModel: images outside the allow-list, downloads outside the policy.

Whoever may create an ImageModel has the operator run ``spec.image`` (and a sidecar engine's
``spec.engine.image``) and download ``spec.source.url`` (docs/security.md). Two settings narrow that:

- allowed images (``--allowed-images``): registry or repository prefixes ``spec.image`` and
  ``spec.engine.image`` must fall under; the operator's own images (inference, adapter) always may.
  Empty: any image.
- the download policy (``--download-*``): passed to ``fetch-model`` as flags; fetch-model enforces it on
  every address it connects to and every redirect (:mod:`kubediffusion.fetch.policy`). What the spec
  alone shows to be refused (plain http while http is not allowed, a host outside the allowed hosts)
  is refused here, before anything is applied, so the model says why instead of running a Job that
  is bound to fail.

Pure functions of the spec and the settings: nothing here calls the API.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from kubediffusion.imagemodel.spec import ImageModelSpec, Source, display_url
from kubediffusion.imagemodel.status import DOWNLOAD_REFUSED, IMAGE_NOT_ALLOWED
from kubediffusion.operator.problems import Failure

DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class DownloadPolicy:
    """Where a url source may download from; the same policy as fetch-model's, which enforces it."""

    allow_http: bool = False
    allowed_networks: tuple[str, ...] = ()  # CIDRs allowed though internal (loopback, private, ...)
    allowed_hosts: tuple[str, ...] = ()  # exact, or *.example.com; empty: any host

    def fetch_flags(self) -> list[str]:
        """fetch-model's flags for this policy (only what differs from its defaults)."""
        flags = ["--allow-http"] if self.allow_http else []
        for network in self.allowed_networks:
            flags += ["--allow-network", network]
        for host in self.allowed_hosts:
            flags += ["--allow-host", host]
        return flags

    def refusal(self, source: Source) -> Failure | None:
        """Why the policy refuses ``source`` outright (from the spec alone), or None.

        Never stricter than fetch-model: what cannot be judged here (addresses, redirects, an odd host
        name) is left to it.
        """
        if source.url is None:
            return None
        parts = urlsplit(source.url)
        scheme = parts.scheme.lower()
        what = f"spec.source.url {display_url(source.url)} refused by the operator's download policy"
        if scheme == "http" and not self.allow_http:
            return Failure(DOWNLOAD_REFUSED, f"{what}: plain http is not allowed, only https (download-allow-http)")
        host = _host(parts.hostname or "")
        if scheme not in ("http", "https") or not self.allowed_hosts or host is None:
            return None
        if any(_host_matches(host, pattern) for pattern in self.allowed_hosts):
            return None
        return Failure(DOWNLOAD_REFUSED, f"{what}: host {host!r} is not an allowed host (download-allowed-hosts)")


def _host(host: str) -> str | None:
    """The host as fetch-model compares it (lower case, IDNA-encoded); None when it cannot be encoded."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def _host_matches(host: str, pattern: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _looks_like_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def normalized_image(reference: str) -> str:
    """The reference as a registry sees it: ``python:3`` is ``docker.io/library/python:3``."""
    first, slash, _ = reference.partition("/")
    if not slash:
        return f"{DOCKER_HUB}/library/{reference}"
    if first == "index.docker.io":
        return DOCKER_HUB + reference[len(first) :]
    return reference if _looks_like_registry(first) else f"{DOCKER_HUB}/{reference}"


def _normalized_prefix(prefix: str) -> str:
    # "ghcr.io" or "localhost:5000" alone is a registry; "python" alone is Docker Hub's library/python.
    if "/" not in prefix and _looks_like_registry(prefix):
        return DOCKER_HUB if prefix == "index.docker.io" else prefix
    return normalized_image(prefix)


def _under(image: str, prefix: str) -> bool:
    """Whether ``image`` is ``prefix`` or below it, on a name boundary (``ghcr.io/a`` is not ``ghcr.io/ab``)."""
    if prefix.endswith(("/", ":", "@")):
        return image.startswith(prefix)
    return image == prefix or any(image.startswith(prefix + sep) for sep in "/:@")


def image_refusal(
    image: str, allowed: Sequence[str], default: str | Sequence[str], *, field: str = "spec.image"
) -> Failure | None:
    """Why ``image`` (at ``field``) may not run (None: it may); ``default``: the operator's own image(s)."""
    if not image or not allowed:
        return None
    name = normalized_image(image)
    own = [default] if isinstance(default, str) else list(default)
    if any(name == normalized_image(o) for o in own) or any(_under(name, _normalized_prefix(p)) for p in allowed):
        return None
    return Failure(
        IMAGE_NOT_ALLOWED,
        f"{field} {image!r} is not allowed: the operator runs only its own images and images under"
        f" {', '.join(allowed)} (allowed-images)",
    )


def server_image(spec: ImageModelSpec, *, inference_image: str, adapter_image: str) -> str:
    """The model server's image: ``spec.image``, else the inference image (diffusers: torch), else the
    small adapter image (every other engine: no torch; the operator/router image by default)."""
    return spec.image or (inference_image if spec.needs_weights else adapter_image)


def images_refusal(spec: ImageModelSpec, allowed: Sequence[str], own: Sequence[str]) -> Failure | None:
    """Why ``spec.image`` or ``spec.engine.image`` (a sidecar) may not run; ``own``: the operator's images."""
    return image_refusal(spec.image, allowed, own) or image_refusal(
        spec.engine.image or "", allowed, own, field="spec.engine.image"
    )


HTTPS_ONLY = DownloadPolicy()  # fetch-model's own default
