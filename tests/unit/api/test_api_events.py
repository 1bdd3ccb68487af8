"""Stream events: OpenAI's shapes (the ``openai`` client's own types validate them strictly), the SSE wire
format, and the decoder the router and the tests read streams with."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from openai._models import validate_type
from openai.types import ImageEditStreamEvent, ImageGenStreamEvent

from kubediffusion.api.errors import QueueFullError
from kubediffusion.api.events import (
    KEEPALIVE,
    EventEcho,
    SSEDecoder,
    completed_event,
    encode_error,
    encode_event,
    partial_image_event,
)
from kubediffusion.api.schema import GenerationParams

PARAMS = GenerationParams("a", "", 1, 64, 64, 2, 0.0, 1, "webp", 80)
NO_ECHO = EventEcho.of(PARAMS, quality=None, background=None)


def strict(data: Any, task: str) -> Any:
    """Validation as the client does it with ``_strict_response_validation=True``."""
    return validate_type(type_=ImageGenStreamEvent if task == "generation" else ImageEditStreamEvent, value=data)


@pytest.mark.parametrize(("task", "prefix"), [("generation", "image_generation"), ("edit", "image_edit")])
def test_events_validate_strictly_as_the_openai_client_types(task: Any, prefix: str) -> None:
    echo = EventEcho.of(PARAMS, quality=None, background="opaque")
    partial = json.loads(encode_event(partial_image_event(task, "AAAA", echo, 1, 123)).split(b"data: ")[1])
    completed = json.loads(encode_event(completed_event(task, "BBBB", echo, 124)).split(b"data: ")[1])
    assert partial == {"type": f"{prefix}.partial_image", "b64_json": "AAAA", "created_at": 123, "size": "auto"} | {
        "quality": "auto",
        "background": "opaque",
        "output_format": "webp",
        "partial_image_index": 1,
    }
    assert completed["type"] == f"{prefix}.completed" and "id" not in completed
    details = {"text_tokens": 0, "image_tokens": 0}
    assert completed["usage"] == {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0} | {
        "input_tokens_details": details
    }
    assert strict(partial, task).partial_image_index == 1
    assert strict(completed, task).usage.total_tokens == 0


def test_echo_uses_only_values_openais_event_schema_allows() -> None:
    large = EventEcho.of(replace(PARAMS, width=1024, height=1536), quality="hd", background=None)
    assert (large.size, large.quality, large.background) == ("1024x1536", "auto", "auto")
    assert EventEcho.of(PARAMS, quality="high", background="transparent").quality == "high"


def test_wire_format_is_one_event_and_one_data_line() -> None:
    event = encode_event(partial_image_event("generation", "AAAA", NO_ECHO, 0, 1))
    lines = event.decode().split("\n")
    assert lines[0] == "event: image_generation.partial_image"
    assert lines[1].startswith("data: {") and lines[2:] == ["", ""]
    error = encode_error(QueueFullError("full"))
    assert error.startswith(b"event: error\ndata: ")
    assert json.loads(error.split(b"data: ")[1])["error"]["code"] == "queue_full"


def test_decoder_reassembles_events_across_chunks_and_skips_comments() -> None:
    stream = KEEPALIVE + b'event: a\r\ndata: {"x": 1}\r\n\r\n' + b"data: 2\ndata: 3\n\n" + b": tail\n\n"
    decoder = SSEDecoder()
    events = [event for index in range(len(stream)) for event in decoder.feed(stream[index : index + 1])]
    assert [(event.event, event.data) for event in events] == [("a", '{"x": 1}'), (None, "2\n3")]
    assert events[0].json() == {"x": 1}


def test_decoder_refuses_an_event_over_its_limit() -> None:
    with pytest.raises(ValueError, match="more than 16 bytes"):
        SSEDecoder(max_event_bytes=16).feed(b"data: " + b"x" * 32)
