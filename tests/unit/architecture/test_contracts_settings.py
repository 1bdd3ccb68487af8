"""docs/contracts.md names every setting of the router and the model server (the operator's own test
checks its settings): a setting added without a line there fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from kubediffusion.inference.settings import InferenceSettings
from kubediffusion.router.settings import RouterSettings

DOC = Path(__file__).resolve().parents[3] / "docs" / "contracts.md"


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize(
    ("settings", "title"),
    [(RouterSettings, "## Router"), (InferenceSettings, "## Inference server")],
    ids=["router", "inference"],
)
def test_every_setting_is_named_in_its_section(settings: type[BaseSettings], title: str) -> None:
    text = section(title)
    missing = [name for name in settings.model_fields if f"`{name.upper()}`" not in text]
    assert missing == [], f"docs/contracts.md, {title}: add {missing}"
