"""Bad input through the whole stack: every malformed request gets a 4xx OpenAI envelope from the
router, none is a 5xx, and none reaches a pod (its request counter does not move)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.stack import E2EStack

pytestmark = pytest.mark.e2e

MODEL = "guarded"
JSON = "application/json"

# (case id, raw body, content type, expected status, expected param or None)
CASES: list[tuple[str, bytes, str, int, str | None]] = [
    ("missing-prompt", b"{}", JSON, 400, "prompt"),
    ("blank-prompt", b'{"prompt": "   "}', JSON, 400, "prompt"),
    ("null-prompt", b'{"prompt": null}', JSON, 400, "prompt"),
    ("number-prompt", b'{"prompt": 5}', JSON, 400, "prompt"),
    ("huge-prompt", json.dumps({"prompt": "x" * 40000}).encode(), JSON, 400, "prompt"),
    ("prompt-over-model-limit", json.dumps({"prompt": "x" * 3000}).encode(), JSON, 400, "prompt"),
    ("n-zero", b'{"prompt": "a", "n": 0}', JSON, 400, "n"),
    ("n-eleven", b'{"prompt": "a", "n": 11}', JSON, 400, "n"),
    ("n-over-model-max", b'{"prompt": "a", "n": 9}', JSON, 400, "n"),
    ("n-string", b'{"prompt": "a", "n": "2"}', JSON, 400, "n"),
    ("n-float", b'{"prompt": "a", "n": 1.5}', JSON, 400, "n"),
    ("n-bool", b'{"prompt": "a", "n": true}', JSON, 400, "n"),
    ("size-garbage", b'{"prompt": "a", "size": "big"}', JSON, 400, "size"),
    ("size-not-multiple-of-8", b'{"prompt": "a", "size": "63x64"}', JSON, 400, "size"),
    ("size-too-large", b'{"prompt": "a", "size": "4096x4096"}', JSON, 400, "size"),
    ("size-zero", b'{"prompt": "a", "size": "0x64"}', JSON, 400, "size"),
    ("size-number", b'{"prompt": "a", "size": 64}', JSON, 400, "size"),
    ("response-format", b'{"prompt": "a", "response_format": "gif"}', JSON, 400, "response_format"),
    ("output-format", b'{"prompt": "a", "output_format": "bmp"}', JSON, 400, "output_format"),
    ("compression-high", b'{"prompt": "a", "output_compression": 101}', JSON, 400, "output_compression"),
    ("compression-negative", b'{"prompt": "a", "output_compression": -1}', JSON, 400, "output_compression"),
    ("quality", b'{"prompt": "a", "quality": "ultra"}', JSON, 400, "quality"),
    ("style", b'{"prompt": "a", "style": "baroque"}', JSON, 400, "style"),
    ("background", b'{"prompt": "a", "background": "green"}', JSON, 400, "background"),
    ("unknown-field", b'{"prompt": "a", "colour": "red"}', JSON, 400, "colour"),
    ("steps-zero", b'{"prompt": "a", "num_inference_steps": 0}', JSON, 400, "num_inference_steps"),
    ("steps-over-limit", b'{"prompt": "a", "num_inference_steps": 10000}', JSON, 400, "num_inference_steps"),
    ("guidance-negative", b'{"prompt": "a", "guidance_scale": -1}', JSON, 400, "guidance_scale"),
    ("seed-negative", b'{"prompt": "a", "seed": -5}', JSON, 400, "seed"),
    ("seed-string", b'{"prompt": "a", "seed": "abc"}', JSON, 400, "seed"),
    ("stream-string", b'{"prompt": "a", "stream": "yes"}', JSON, 400, "stream"),
    ("partial-images-over-3", b'{"prompt": "a", "stream": true, "partial_images": 4}', JSON, 400, "partial_images"),
    ("user-number", b'{"prompt": "a", "user": 123}', JSON, 400, "user"),
    ("invalid-json", b'{"prompt": "a",', JSON, 400, None),
    ("empty-body", b"", JSON, 400, None),
    ("array-body", b'["prompt"]', JSON, 400, None),
    ("wrong-content-type", b'{"prompt": "a"}', "text/plain", 400, None),
    ("form-content-type", b"prompt=a", "application/x-www-form-urlencoded", 400, None),
    ("unknown-model", b'{"prompt": "a", "model": "no-such-model"}', JSON, 404, "model"),
    ("body-too-large", json.dumps({"prompt": "a", "user": "u" * 2_000_000}).encode(), JSON, 413, None),
]


@pytest.fixture(scope="module")
def stack(e2e_stack: E2EStack) -> E2EStack:
    e2e_stack.apply_model(
        MODEL, {"source": {"tiny": {}}, "limits": {"maxN": 4, "maxPromptChars": 2000, "minSize": 32, "maxSize": 256}}
    )
    e2e_stack.wait_ready(MODEL)
    return e2e_stack


def test_the_table_has_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "param"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_request_gets_a_4xx_envelope_and_never_reaches_a_pod(
    stack: E2EStack, body: bytes, content_type: str, status: int, param: str | None
) -> None:
    (pod_ip,) = stack.pod_ips(MODEL)
    before = stack.pod_request_count(pod_ip)
    response = httpx.post(
        f"{stack.router.url}/v1/images/generations", content=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert stack.pod_request_count(pod_ip) == before


def test_a_good_request_does_reach_the_pod(stack: E2EStack) -> None:
    """The counter the table relies on really moves (so "did not move" above means something)."""
    (pod_ip,) = stack.pod_ips(MODEL)
    before = stack.pod_request_count(pod_ip)
    response = httpx.post(
        f"{stack.router.url}/v1/images/generations", json={"prompt": "a", "size": "64x64"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert stack.pod_request_count(pod_ip) == before + 1
