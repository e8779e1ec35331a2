"""console's indexing_status only moves forward, and only for the document's current version."""

from __future__ import annotations

from .conftest import Api, Stack, consumed, publish


def report(doc: dict[str, object], **extra: object) -> dict[str, object]:
    return {"document_id": doc["id"], "dataset_id": doc["dataset_id"], **extra}


async def test_late_and_reordered_reports_never_overwrite_a_newer_status(stack: Stack, api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    doc = await api.create_document(ds, "Tides follow the moon.")
    await api.settled(ds, doc["id"])
    assert (await api.action(ds, "disable", doc["id"])).status_code == 200
    v2 = await api.settled(ds, doc["id"])
    assert (v2["version"], v2["indexing_status"], v2["segment_count"]) == (2, "completed", 1)

    key = str(doc["id"])
    sent = [
        # A report on the current version arriving after `indexed`: must not move completed back.
        await publish("indexer.document", "indexer.document.indexing", key, report(doc), version=2),
        # Reports on an older version, delivered late.
        await publish(
            "indexer.document", "indexer.document.index_failed", key, report(doc, reason="late"), version=1
        ),
        await publish(
            "indexer.document", "indexer.document.indexed", key, report(doc, segment_count=99), version=1
        ),
    ]
    await consumed(stack.console_group, sent)
    after = await api.document(ds, doc["id"])
    assert (after["version"], after["indexing_status"], after["segment_count"]) == (2, "completed", 1)
    assert after["indexing_error"] is None


async def test_a_report_for_a_newer_change_waits_for_its_version(stack: Stack, api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    doc = await api.create_document(ds, "Comets have tails.")
    await api.settled(ds, doc["id"])
    # A report claiming a version console never produced is not about the current state: ignored.
    sent = await publish(
        "indexer.document",
        "indexer.document.index_failed",
        doc["id"],
        report(doc, reason="future"),
        version=7,
    )
    await consumed(stack.console_group, [sent])
    now = await api.document(ds, doc["id"])
    assert (now["version"], now["indexing_status"]) == (1, "completed")
