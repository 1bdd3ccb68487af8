"""What the operator refuses to run: images outside the allow-list, url sources outside the download policy."""

from __future__ import annotations

import pytest

from kubediffusion.imagemodel.spec import ImageModelSpec, Source
from kubediffusion.imagemodel.status import DOWNLOAD_REFUSED, IMAGE_NOT_ALLOWED
from kubediffusion.operator.policy import DownloadPolicy, image_refusal, normalized_image

DEFAULT = "ghcr.io/kubediffusion/inference:0.1.0"


@pytest.mark.parametrize(
    ("reference", "normalized"),
    [
        ("python:3.11", "docker.io/library/python:3.11"),
        ("acme/inference:1", "docker.io/acme/inference:1"),
        ("index.docker.io/acme/inference:1", "docker.io/acme/inference:1"),
        ("ghcr.io/acme/inference@sha256:abc", "ghcr.io/acme/inference@sha256:abc"),
        ("localhost:5000/inference:1", "localhost:5000/inference:1"),
        ("localhost/inference", "localhost/inference"),
    ],
)
def test_images_are_compared_as_the_registry_names_them(reference: str, normalized: str) -> None:
    assert normalized_image(reference) == normalized


@pytest.mark.parametrize(
    ("image", "allowed", "ok"),
    [
        ("anything.example/x:1", [], True),  # no allow-list: any image
        ("", ["ghcr.io/acme/"], True),  # no spec.image: the operator's own
        (DEFAULT, ["registry.example/"], True),  # the configured inference image always may run
        ("ghcr.io/acme/inference:2", ["ghcr.io/acme/"], True),
        ("ghcr.io/acme/inference:2", ["ghcr.io/acme"], True),
        ("ghcr.io/acme/inference@sha256:" + "a" * 64, ["ghcr.io/acme/inference"], True),
        ("ghcr.io/acme-evil/inference:2", ["ghcr.io/acme"], False),  # a prefix stops at a name boundary
        ("ghcr.io.evil.example/acme/x:1", ["ghcr.io"], False),
        ("ghcr.io/other/x:1", ["ghcr.io/acme/", "registry.example"], False),
        ("registry.example/team/x:1", ["ghcr.io/acme/", "registry.example"], True),
        ("python:3.11", ["python"], True),  # Docker Hub's library/python
        ("python:3.11", ["docker.io/library/"], True),
        ("pythonista/x:1", ["python"], False),
        ("evil/python:3.11", ["python"], False),
        ("localhost:5000/x:1", ["localhost:5000"], True),
        ("localhost:5001/x:1", ["localhost:5000"], False),
    ],
)
def test_the_image_allow_list(image: str, allowed: list[str], ok: bool) -> None:
    refusal = image_refusal(image, allowed, DEFAULT)
    assert (refusal is None) is ok, refusal
    if refusal is not None:
        assert refusal.reason == IMAGE_NOT_ALLOWED and repr(image) in refusal.message
        assert all(prefix in refusal.message for prefix in allowed)


def source(url: str) -> Source:
    return ImageModelSpec.from_body({"spec": {"source": {"url": url}}}).source


@pytest.mark.parametrize(
    ("url", "policy", "refused"),
    [
        ("https://models.example/m.tar.gz", DownloadPolicy(), None),
        ("http://models.example/m.tar.gz", DownloadPolicy(), "plain http is not allowed"),
        ("http://models.example/m.tar.gz", DownloadPolicy(allow_http=True), None),
        ("s3://bucket/prefix", DownloadPolicy(allowed_hosts=("models.example",)), None),  # not an http download
        ("https://models.example/m.tar.gz", DownloadPolicy(allowed_hosts=("models.example",)), None),
        ("https://MODELS.example./m.tar.gz", DownloadPolicy(allowed_hosts=("models.example",)), None),
        ("https://cdn.models.example/m.zip", DownloadPolicy(allowed_hosts=("*.models.example",)), None),
        ("https://models.example/m.zip", DownloadPolicy(allowed_hosts=("*.models.example",)), "not an allowed host"),
        ("https://evil.example/m.tar", DownloadPolicy(allowed_hosts=("models.example",)), "'evil.example'"),
        # Addresses are fetch-model's to judge (it resolves and connects): not refused from the spec alone.
        ("https://169.254.169.254/m.tar.gz", DownloadPolicy(), None),
    ],
)
def test_what_the_download_policy_refuses_from_the_spec_alone(
    url: str, policy: DownloadPolicy, refused: str | None
) -> None:
    refusal = policy.refusal(source(url))
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reason == DOWNLOAD_REFUSED and refused in refusal.message


def test_a_refusal_names_the_url_without_credentials_or_signature() -> None:
    refusal = DownloadPolicy().refusal(source("http://user:pw@models.example/m.tar.gz?X-Amz-Signature=s3cr3t"))
    assert refusal is not None
    assert "http://models.example/m.tar.gz" in refusal.message
    assert "pw" not in refusal.message and "s3cr3t" not in refusal.message


def test_fetch_model_flags_of_a_policy() -> None:
    assert DownloadPolicy().fetch_flags() == []
    policy = DownloadPolicy(allow_http=True, allowed_networks=("10.0.0.0/8", "::1/128"), allowed_hosts=("a.example",))
    assert policy.fetch_flags() == [
        "--allow-http", "--allow-network", "10.0.0.0/8", "--allow-network", "::1/128", "--allow-host", "a.example"
    ]  # fmt: skip
