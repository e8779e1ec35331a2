"""Duplicated and reordered delivery of console's real events (republished by hand): the index and console
stay exactly as they were."""

from __future__ import annotations

import json
import uuid
from typing import Any

from .conftest import Api, Sent, Stack, consumed, publish


def index_snapshot(stack: Stack, document_id: str) -> tuple[list[tuple[Any, ...]], ...]:
    return (
        stack.indexer_rows(
            "SELECT id, version, enabled, archived, deleted, text_sha256, segment_count, updated_at "
            "FROM indexed_documents WHERE id = %s",
            document_id,
        ),
        stack.indexer_rows(
            "SELECT id, position, content FROM segments WHERE document_id = %s ORDER BY position", document_id
        ),
        stack.indexer_rows("SELECT count(*) FROM outbox WHERE aggregate_id = %s", document_id),
    )


def console_events(stack: Stack, document_id: str) -> list[tuple[Any, ...]]:
    return stack.console_rows(
        "SELECT event_id, topic, event_type, aggregate_id, aggregate_version, payload FROM outbox "
        "WHERE aggregate_id = %s ORDER BY id",
        document_id,
    )


async def republish(events: list[tuple[Any, ...]], *, fresh_ids: bool = False) -> list[Sent]:
    sent = []
    for event_id, topic, event_type, key, version, payload in events:
        data = payload if isinstance(payload, dict) else json.loads(payload)
        sent.append(
            await publish(
                topic,
                event_type,
                key,
                data,
                version=version,
                event_id=uuid.uuid4() if fresh_ids else event_id,
                source="console",
            )
        )
    return sent


async def test_duplicated_and_reordered_delivery_changes_nothing(stack: Stack, api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    doc_id = (await api.create_document(ds, "Auroras dance near the poles."))["id"]
    for action in ("disable", "enable", "archive", "un_archive"):
        assert (await api.action(ds, action, doc_id)).status_code == 200
    final = await api.settled(ds, doc_id)
    assert final["version"] == 5
    events = console_events(stack, doc_id)
    assert [e[4] for e in events] == [1, 2, 3, 4, 5]
    before_index, before_console = index_snapshot(stack, doc_id), await api.document(ds, doc_id)
    inbox_before = stack.indexer_rows("SELECT count(*) FROM inbox WHERE consumer = %s", stack.indexer_group)

    duplicated = await republish(events)  # same ids, same order: the inbox absorbs them
    reordered = await republish(list(reversed(events)))  # same ids, reverse order
    await consumed(stack.indexer_group, duplicated + reordered)
    assert index_snapshot(stack, doc_id) == before_index
    assert (
        stack.indexer_rows("SELECT count(*) FROM inbox WHERE consumer = %s", stack.indexer_group)
        == inbox_before
    )

    # The same states sent again as new events (new ids), newest first: the version guard drops them all
    # except the one equal to the current version, which the document row's own version check ignores.
    renewed = await republish(list(reversed(events)), fresh_ids=True)
    await consumed(stack.indexer_group, renewed)
    assert index_snapshot(stack, doc_id) == before_index
    assert await api.document(ds, doc_id) == before_console
    assert len(await api.search(ds, "aurora")) == 1
