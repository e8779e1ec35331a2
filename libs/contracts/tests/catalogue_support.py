"""What the catalogue's tests share: where docs/events is and how to read the document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

from contracts import catalogue

ROOT = Path(__file__).resolve().parents[3]
EVENTS = ROOT / "docs" / "events"
# Formats checked too (uuid, date-time), whatever the schema's draft: a key or `ce_id` must be a UUID.
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def document() -> dict[str, Any]:
    return dict(json.loads((EVENTS / catalogue.ASYNCAPI_FILE).read_text(encoding="utf-8")))


def schema_file(event_type: str) -> dict[str, Any]:
    return dict(
        json.loads((EVENTS / catalogue.SCHEMA_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    )


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """What a local `$ref` (a JSON pointer) points at; KeyError when it dangles."""
    assert ref.startswith("#/"), f"only local references are expected: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)
