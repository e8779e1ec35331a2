"""50 concurrent toggles of one document from several clients: console and the index agree at the end."""

from __future__ import annotations

import asyncio
import uuid

from testsupport import wait_until

from .conftest import Api, Stack, make_api_for


async def test_fifty_concurrent_toggles_converge(stack: Stack, api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    doc_id = (await api.create_document(ds, "Quasars shine across the universe."))["id"]
    clients = [make_api_for(stack, api.account_id) for _ in range(5)]
    try:
        actions = ["enable" if i % 2 else "disable" for i in range(50)]
        responses = await asyncio.gather(
            *(clients[i % len(clients)].action(ds, action, doc_id) for i, action in enumerate(actions))
        )
    finally:
        for client in clients:
            await client.aclose()
    assert {r.status_code for r in responses} == {200}

    final = await api.settled(ds, doc_id, timeout=60)
    assert final["indexing_status"] == "completed"
    versions = [
        v
        for (v,) in stack.console_rows(
            "SELECT aggregate_version FROM outbox WHERE aggregate_id = %s ORDER BY id", doc_id
        )
    ]
    # Strictly increasing, no gap, inserted in version order, the last one is the document's.
    assert versions == list(range(1, final["version"] + 1))
    assert final["version"] > 2  # the toggles really interleaved

    async def index_caught_up() -> dict[str, object] | None:
        indexed = await api.indexed(doc_id)
        return indexed if indexed and indexed["version"] == final["version"] else None

    indexed = await wait_until(index_caught_up, what="index at console's final version")
    assert indexed["enabled"] == final["enabled"] and indexed["searchable"] == final["enabled"]
    hits = await api.search(ds, "quasar")
    assert (len(hits) == 1) == final["enabled"]
    assert uuid.UUID(doc_id)


async def test_concurrent_batches_over_overlapping_documents(stack: Stack, api: Api) -> None:
    """Batches lock their documents in id order (no deadlock between requests); a deadlock with the
    consumer's report batch is retried as a whole unit of work. Every request succeeds."""
    ds = (await api.create_dataset())["id"]
    ids = [(await api.create_document(ds, f"Pulsar {i} spins fast."))["id"] for i in range(5)]
    clients = [make_api_for(stack, api.account_id) for _ in range(4)]
    try:
        responses = await asyncio.gather(
            *(
                clients[i % 4].action(
                    ds, "enable" if i % 2 else "disable", *(ids if i % 3 else reversed(ids))
                )
                for i in range(30)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200]
    for doc_id in ids:
        final = await api.settled(ds, doc_id, timeout=60)
        versions = [
            v
            for (v,) in stack.console_rows(
                "SELECT aggregate_version FROM outbox WHERE aggregate_id = %s ORDER BY id", doc_id
            )
        ]
        assert versions == list(range(1, final["version"] + 1))
