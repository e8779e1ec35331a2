"""The event envelope: CloudEvents 1.0 in Kafka binary mode.

Headers carry the attributes (`ce_id`, `ce_type`, `ce_source`, `ce_subject` = aggregate id, `ce_time`,
`ce_specversion`, the extensions `ce_aggregateversion` and `ce_prevversion`: the aggregate's version
before this event), `traceparent`/`tracestate` and `content-type`;
the value is the JSON `data`. The Kafka key is the aggregate id, so one aggregate maps to one partition.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
REQUIRED_HEADERS = ("ce_specversion", "ce_id", "ce_type", "ce_source")
# What PostgreSQL can store: an aggregate version is a BIGINT, and no text or JSON string may hold NUL.
MAX_VERSION = 2**63 - 1
_STORED_HEADERS = ("ce_type", "ce_source", "ce_subject", "ce_id")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """An event to record in the outbox, inside the caller's transaction.

    `topic` is the aggregate type (e.g. `console.document`), `type` the CloudEvents type
    (e.g. `console.document.enabled`), `aggregate_id` the Kafka key, `version` the aggregate's version
    after the change (consumers use it to drop stale events). `data` must be JSON-serialisable.
    `standalone`: the event carries the aggregate's whole state and follows no particular predecessor (a
    snapshot): it gets no previous version, so a gap-aware consumer never parks it.
    """

    topic: str
    type: str
    aggregate_id: str
    data: Mapping[str, Any]
    version: int | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    time: datetime = field(default_factory=_now)
    standalone: bool = False


class EventTooLarge(ValueError):
    """An event whose JSON payload exceeds the configured limit (the broker's record size, 1 MiB by default
    on Kafka): refused when written, never left as a row the relay can only dead-letter."""

    def __init__(self, event: Event, size: int, limit: int) -> None:
        super().__init__(f"event {event.type} for {event.aggregate_id} is {size} bytes; the limit is {limit}")
        self.size = size
        self.limit = limit


class MalformedMessage(ValueError):
    """A Kafka record that is not a valid event envelope; consumers dead-letter it."""


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event as a consumer sees it, parsed from a Kafka record."""

    id: uuid.UUID
    type: str
    source: str
    subject: str | None
    time: datetime | None
    version: int | None
    data: dict[str, Any]
    headers: dict[str, str]
    topic: str
    partition: int
    offset: int
    # The aggregate's version before this one (None: unknown, e.g. its first event, or an older writer).
    prev_version: int | None = None


def encode_headers(
    *,
    event_id: uuid.UUID | str,
    event_type: str,
    source: str,
    subject: str,
    time: datetime | str,
    version: int | None,
    trace_context: Mapping[str, str],
    prev_version: int | None = None,
) -> list[tuple[str, bytes]]:
    headers = [
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", str(event_id).encode()),
        ("ce_type", event_type.encode()),
        ("ce_source", source.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", (time if isinstance(time, str) else time.isoformat()).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
    if version is not None:
        headers.append(("ce_aggregateversion", str(version).encode()))
    if prev_version is not None:
        headers.append(("ce_prevversion", str(prev_version).encode()))
    headers.extend((k, v.encode()) for k, v in trace_context.items() if k in ("traceparent", "tracestate"))
    return headers


def encode_value(data: Mapping[str, Any]) -> bytes:
    return orjson.dumps(data)


def decode_record(
    *,
    topic: str,
    partition: int,
    offset: int,
    headers: Sequence[tuple[str, bytes]] | None,
    value: bytes | None,
) -> ReceivedEvent:
    """Parse a Kafka record into a ReceivedEvent or raise MalformedMessage saying why."""
    try:
        hdrs = {k: v.decode() for k, v in (headers or ())}
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"header is not UTF-8: {exc}") from exc
    missing = [h for h in REQUIRED_HEADERS if not hdrs.get(h)]
    if missing:
        raise MalformedMessage(f"missing CloudEvents headers: {', '.join(missing)}")
    for name in _STORED_HEADERS:
        if "\x00" in hdrs.get(name, ""):
            raise MalformedMessage(f"{name} contains a NUL character")
    if hdrs["ce_specversion"] != SPEC_VERSION:
        raise MalformedMessage(f"unsupported ce_specversion {hdrs['ce_specversion']!r}")
    try:
        event_id = uuid.UUID(hdrs["ce_id"])
    except ValueError as exc:
        raise MalformedMessage(f"ce_id is not a UUID: {hdrs['ce_id']!r}") from exc
    if value is None:
        raise MalformedMessage("record has no value")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedMessage(f"value is JSON {type(data).__name__}, expected an object")
    if b"\\u0000" in value and _holds_nul(data):  # cheap scan first: the walk runs only on a suspect value
        raise MalformedMessage("value contains a NUL character in a string")
    version = _version(hdrs, "ce_aggregateversion")
    prev_version = _version(hdrs, "ce_prevversion")
    when: datetime | None = None
    if hdrs.get("ce_time"):
        try:
            when = datetime.fromisoformat(hdrs["ce_time"])
        except ValueError as exc:
            raise MalformedMessage(f"ce_time is not ISO 8601: {hdrs['ce_time']!r}") from exc
    return ReceivedEvent(
        id=event_id,
        type=hdrs["ce_type"],
        source=hdrs["ce_source"],
        subject=hdrs.get("ce_subject"),
        time=when,
        version=version,
        data=data,
        headers=hdrs,
        topic=topic,
        partition=partition,
        offset=offset,
        prev_version=prev_version,
    )


def _version(hdrs: Mapping[str, str], name: str) -> int | None:
    if name not in hdrs:
        return None
    try:
        version = int(hdrs[name])
    except ValueError as exc:
        raise MalformedMessage(f"{name} is not an integer: {hdrs[name]!r}") from exc
    if not 0 <= version <= MAX_VERSION:
        raise MalformedMessage(f"{name} is out of range: {version}")
    return version


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False
