"""The event catalogue: an AsyncAPI 3.0 document and one JSON Schema per event type, generated from the
contracts (`scripts/catalogue.py`, `make catalogue`, writes them to docs/events/; a test fails when the
checked-in files differ from what this module renders).

Channels are the topics, each with a `send` operation by the service that owns it; messages are the event
types: the payload's JSON Schema (the pydantic model, plus `version` where the outbox writer adds it), the
CloudEvents headers the relay writes (from `outbox.envelope.encode_headers`), and the Kafka key. Each
message's example is built by the contract's own `to_event`, so the catalogue shows what the code sends.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from contracts import auth, console, indexer
from outbox import Event
from outbox.consumer.dead_letters import REDRIVE_HEADER  # what `outbox dlq redrive` adds
from outbox.envelope import CONTENT_TYPE, SPEC_VERSION, encode_headers

ASYNCAPI_FILE = "asyncapi.json"
SCHEMA_DIR = "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
KAFKA_BINDING = "0.5.0"


@dataclass(frozen=True)
class Topic:
    address: str
    producer: str  # the service that owns and writes it: its events' `ce_source`
    title: str
    description: str


TOPICS = (
    Topic(
        auth.ACCOUNT_TOPIC,
        "auth",
        "Accounts",
        "An account's life. Key = account id. console consumes `registered` (the account's workspace).",
    ),
    Topic(
        auth.MAIL_TOPIC,
        "auth",
        "One-time codes to mail",
        "Codes for auth's mail sender (`python -m auth.mailer`, group `auth-mailer`), its only consumer. "
        "Key = account id; unversioned. Auth scrubs `code` from its retained outbox rows once published "
        "or dead, so a redriven dead row arrives without one (`contracts.auth.parse_mail` returns None: "
        "nothing to send).",
    ),
    Topic(
        console.TOPIC,
        "console",
        "Documents",
        "Event-carried state: every event holds the document's whole state at its version, so the indexer "
        "converges without reading console. Key = document id; the indexer consumes it (gap-aware).",
    ),
    Topic(
        indexer.TOPIC,
        "indexer",
        "Indexing reports",
        "The indexer's reports about one document version. Key = document id; version = the document "
        "version reported on. console consumes them and applies a report only to its document's current "
        "version, and dead-letters one whose dataset or workspace is not the document's.",
    ),
)

SUMMARIES = {
    auth.AccountRegistered.TYPE: "An account was registered.",
    auth.PasswordChanged.TYPE: "An account's password changed (`reason`: e.g. reset, change).",
    auth.PasswordResetCode.TYPE: "Mail a password-reset code.",
    auth.LoginCode.TYPE: "Mail a passwordless login code.",
    console.DocumentEventType.CREATED: "A document was created.",
    console.DocumentEventType.UPDATED: "A document's name or text changed.",
    console.DocumentEventType.ENABLED: "A document was enabled (searchable unless archived).",
    console.DocumentEventType.DISABLED: "A document was disabled (no longer searchable).",
    console.DocumentEventType.ARCHIVED: "A document was archived (no longer searchable).",
    console.DocumentEventType.UNARCHIVED: "A document was unarchived.",
    console.DocumentEventType.DELETED: "A document was deleted (`text` is empty).",
    console.DocumentEventType.SNAPSHOT: (
        "A document's current state re-announced without a change (reconcile, rebuild-index): same "
        "version, standalone (no `ce_prevversion`)."
    ),
    indexer.ReportType.INDEXING: "The indexer started indexing a document version.",
    indexer.ReportType.INDEXED: "A document version is indexed.",
    indexer.ReportType.INDEX_FAILED: "Indexing a document version failed.",
}

# Fixed example values: the rendering is deterministic, so the checked-in files can be compared.
_ACCOUNT = uuid.UUID("0b9f2c4e-6a51-4d1e-9d3c-2f4a8e7b1c01")
_DOCUMENT = uuid.UUID("5d2e8f1a-3b7c-4e9d-8a6f-1c2b3d4e5f02")
_DATASET = uuid.UUID("7a1b2c3d-4e5f-4a6b-9c8d-0e1f2a3b4c03")
_WORKSPACE = uuid.UUID("9c8d7e6f-5a4b-4c3d-8e2f-1a0b9c8d7e04")
_RESET = uuid.UUID("3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a605")
_TIME = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
_EXPIRES = datetime(2026, 1, 1, 12, 15, tzinfo=UTC)
_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_IDS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # the namespace of the examples' event ids


@dataclass(frozen=True)
class Catalogued:
    """One event type: its payload model and an example built by the contract's own `to_event`."""

    model: type[BaseModel]
    event: Event


def catalogued() -> list[Catalogued]:
    """Every event type the contracts define, with an example of each."""
    ada = {"email": "ada@example.com", "name": "Ada"}
    events: list[tuple[type[BaseModel], Event]] = [
        (auth.AccountRegistered, auth.AccountRegistered(account_id=_ACCOUNT, **ada, version=1).to_event()),
        (
            auth.PasswordChanged,
            auth.PasswordChanged(
                account_id=_ACCOUNT, email=ada["email"], version=2, reason="reset"
            ).to_event(),
        ),
        (
            auth.PasswordResetCode,
            auth.PasswordResetCode(
                account_id=_ACCOUNT, **ada, reset_id=_RESET, code="482913", expires_at=_EXPIRES
            ).to_event(),
        ),
        (
            auth.LoginCode,
            auth.LoginCode(account_id=_ACCOUNT, **ada, code="719204", expires_at=_EXPIRES).to_event(),
        ),
    ]
    state = console.DocumentState(
        document_id=_DOCUMENT,
        dataset_id=_DATASET,
        workspace_id=_WORKSPACE,
        owner_account_id=str(_ACCOUNT),
        name="notes",
        text="Enabling a document reaches the search index exactly once.",
        enabled=True,
        archived=False,
        version=3,
    )
    for event_type in console.DocumentEventType:
        deleted = event_type is console.DocumentEventType.DELETED
        shown = state.model_copy(update={"text": "", "deleted": True} if deleted else {})
        events.append((console.DocumentState, shown.to_event(event_type)))
    ids = {"document_id": _DOCUMENT, "dataset_id": _DATASET, "workspace_id": _WORKSPACE}
    events += [
        (indexer.DocumentIndexing, indexer.DocumentIndexing(**ids).to_event(3)),
        (
            indexer.DocumentIndexed,
            indexer.DocumentIndexed(**ids, segment_count=12, searchable=True).to_event(3),
        ),
        (indexer.DocumentIndexFailed, indexer.DocumentIndexFailed(**ids, reason="timeout").to_event(3)),
    ]
    return [
        Catalogued(model, dataclasses.replace(event, id=uuid.uuid5(_IDS, event.type), time=_TIME))
        for model, event in events
    ]


def wire_data(event: Event) -> dict[str, Any]:
    """The record's value: what `OutboxWriter.add` stores, which copies the version into the data."""
    data = dict(event.data)
    if event.version is not None:
        data.setdefault("version", event.version)
    return data


def wire_headers(event: Event, source: str) -> dict[str, str]:
    """The record's headers as the relay writes them (`encode_headers`), for the example."""
    # The aggregate's first version names no predecessor; a standalone snapshot never does.
    prev = event.version - 1 if event.version and event.version > 1 and not event.standalone else None
    headers = encode_headers(
        event_id=event.id,
        event_type=event.type,
        source=source,
        subject=event.aggregate_id,
        time=event.time,
        version=event.version,
        trace_context={"traceparent": _TRACEPARENT},
        prev_version=prev,
    )
    return {name: value.decode() for name, value in headers}


def key_field(event: Event) -> str:
    """The payload field the key (the aggregate id) is taken from."""
    fields = [name for name, value in event.data.items() if value == event.aggregate_id]
    if len(fields) != 1:
        raise ValueError(f"{event.type}: the key {event.aggregate_id!r} is in fields {fields}, expected one")
    return fields[0]


def payload_schema(entry: Catalogued) -> dict[str, Any]:
    """The JSON Schema of the record's value: the model's, plus the `version` the writer adds."""
    schema = entry.model.model_json_schema()
    if entry.event.version is not None and "version" not in schema["properties"]:
        schema["properties"]["version"] = {
            "type": "integer",
            "title": "Version",
            "description": "The aggregate version (`ce_aggregateversion`), copied into the data by the outbox writer.",
        }
        schema["required"] = [*schema.get("required", []), "version"]
    return schema


def headers_schema(event: Event, producer: str) -> dict[str, Any]:
    """CloudEvents 1.0 in Kafka binary mode: the attributes as `ce_*` headers (UTF-8 strings)."""
    versioned = event.version is not None
    properties: dict[str, Any] = {
        "ce_specversion": {"type": "string", "const": SPEC_VERSION},
        "ce_id": {
            "type": "string",
            "format": "uuid",
            "description": "The event's id; consumers deduplicate on it (inbox key).",
        },
        "ce_type": {"type": "string", "const": event.type},
        "ce_source": {
            "type": "string",
            "const": producer,
            "description": "The producing service (its OutboxWriter source).",
        },
        "ce_subject": {"type": "string", "description": "The aggregate id, the same as the Kafka key."},
        "ce_time": {
            "type": "string",
            "format": "date-time",
            "description": "When the event was written, in the producer's transaction.",
        },
        "content-type": {"type": "string", "const": CONTENT_TYPE},
    }
    required = list(properties)
    if versioned:
        properties["ce_aggregateversion"] = {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "The aggregate's version after this event (consumers drop older versions).",
        }
        required.append("ce_aggregateversion")
        if not event.standalone:
            properties["ce_prevversion"] = {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The aggregate's version before this event; absent on its first event. "
                "A gap-aware consumer parks an event whose previous version it has not applied.",
            }
    properties["traceparent"] = {
        "type": "string",
        "description": "W3C trace context of the transaction that wrote the event (or the relay's send span).",
    }
    properties["tracestate"] = {"type": "string", "description": "W3C trace state, when there is one."}
    properties[REDRIVE_HEADER] = {
        "type": "string",
        "description": "Set only on a dead letter an operator redrove (`outbox dlq redrive`): a new attempt.",
    }
    return {"type": "object", "properties": properties, "required": required}


def _summary(event_type: str) -> str:
    if event_type not in SUMMARIES:
        raise KeyError(f"{event_type}: add its one-line summary to contracts.catalogue.SUMMARIES")
    return SUMMARIES[event_type]


def _schema_id(model: type[BaseModel]) -> str:
    return f"{model.__module__.removeprefix('contracts.')}.{model.__name__}"


def _message(entry: Catalogued, topic: Topic) -> dict[str, Any]:
    event = entry.event
    field = key_field(event)
    key = {k: v for k, v in payload_schema(entry)["properties"][field].items() if k != "title"}
    key["description"] = f"The aggregate id: the payload's `{field}` (also `ce_subject`)."
    message: dict[str, Any] = {
        "name": event.type,
        "title": event.type,
        "summary": _summary(event.type),
        "contentType": CONTENT_TYPE,
        "headers": headers_schema(event, topic.producer),
        "payload": {"$ref": f"#/components/schemas/{_schema_id(entry.model)}"},
        "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING}},
        "examples": [
            {
                "name": event.type.rsplit(".", 1)[-1],
                "headers": wire_headers(event, topic.producer),
                "payload": wire_data(event),
            }
        ],
    }
    return message


def _by_topic(entries: list[Catalogued]) -> Iterator[tuple[Topic, list[Catalogued]]]:
    known = {topic.address for topic in TOPICS}
    strays = sorted({e.event.type for e in entries if e.event.topic not in known})
    if strays:
        raise ValueError(f"event types on a topic missing from contracts.catalogue.TOPICS: {strays}")
    for topic in TOPICS:
        yield topic, [e for e in entries if e.event.topic == topic.address]


def asyncapi(entries: list[Catalogued] | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document."""
    entries = catalogued() if entries is None else entries
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic, members in _by_topic(entries):
        channel = topic.address  # the channel's id in the document
        channels[channel] = {
            "address": topic.address,
            "title": topic.title,
            "description": topic.description,
            "messages": {e.event.type: {"$ref": f"#/components/messages/{e.event.type}"} for e in members},
        }
        operations[f"{topic.producer}.send.{topic.address}"] = {
            "action": "send",
            "title": f"{topic.producer} publishes {topic.address}",
            "summary": f"Written by {topic.producer} in its outbox, in the transaction of the change; "
            "its relay publishes at least once, in order per key.",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{e.event.type}"} for e in members],
        }
        for entry in members:
            messages[entry.event.type] = _message(entry, topic)
            schema = payload_schema(entry)
            previous = schemas.setdefault(_schema_id(entry.model), schema)
            if previous != schema:  # one model, one schema: its types agree on carrying a version
                raise ValueError(f"{entry.event.type}: {entry.model.__name__} is versioned inconsistently")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "outbox-reference events",
            "version": "1.0.0",
            "description": (
                "The events the services exchange through their transactional outboxes, generated from "
                "`libs/contracts` by `make catalogue` (do not edit by hand). Envelope: CloudEvents 1.0 in "
                "Kafka binary mode (attributes in `ce_*` headers, the value is the JSON data). Delivery is "
                "at least once and in order per key (the aggregate id); consumers deduplicate on `ce_id` "
                "and drop versions older than one applied. Payloads may gain fields: consumers ignore "
                "fields they do not know. On the wire every topic name carries `OUTBOX_TOPIC_PREFIX` "
                "(empty by default)."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def json_schemas(entries: list[Catalogued] | None = None) -> dict[str, dict[str, Any]]:
    """One standalone JSON Schema (2020-12) per event type: the record's value."""
    entries = catalogued() if entries is None else entries
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        schema = copy.deepcopy(payload_schema(entry))
        description = " ".join(filter(None, [_summary(entry.event.type), schema.pop("description", None)]))
        out[entry.event.type] = {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": entry.event.type,
            "description": description,
            **{k: v for k, v in schema.items() if k != "title"},
        }
    return out


def render() -> dict[str, str]:
    """Every file of docs/events/, by path relative to it, as it should be checked in."""
    entries = catalogued()
    files = {ASYNCAPI_FILE: _dump(asyncapi(entries))}
    for event_type, schema in json_schemas(entries).items():
        files[f"{SCHEMA_DIR}/{event_type}.json"] = _dump(schema)
    return files


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
