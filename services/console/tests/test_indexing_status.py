"""console's indexing_status only moves forward, and only for the document's current version."""

from __future__ import annotations

from collections.abc import Callable

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


async def test_a_report_naming_another_tenant_is_dead_lettered_and_changes_nothing(
    stack: Stack, make_api: Callable[..., Api]
) -> None:
    """Security review, finding 9. Before: console trusted a report by document id alone, so anyone able to
    produce to `indexer.document` could write another tenant's document status and error text. Now a report
    must name the document's own dataset (and workspace, when it carries one); any other is dead-lettered."""
    victim, thief = make_api(), make_api()
    ds = (await victim.create_dataset())["id"]
    doc = await victim.create_document(ds, "Otters hold hands while they sleep.")
    await victim.settled(ds, doc["id"])
    thief_ds = (await thief.create_dataset())["id"]
    [(workspace,)] = stack.console_rows("SELECT workspace_id FROM documents WHERE id = %s", doc["id"])
    [(thief_workspace,)] = stack.console_rows("SELECT workspace_id FROM datasets WHERE id = %s", thief_ds)
    # The window a forger aims at: the version not reported on yet (any report would move it forward).
    stack.console_rows(
        "UPDATE documents SET indexing_status = 'waiting', segment_count = 0 WHERE id = %s RETURNING id",
        doc["id"],
    )

    key, genuine = str(doc["id"]), report(doc, workspace_id=str(workspace))
    topic, failed = "indexer.document", "indexer.document.index_failed"
    elsewhere = {"dataset_id": thief_ds, "workspace_id": str(thief_workspace)}
    forged = [
        # Another tenant's dataset, without a workspace (as reports were before they carried one) ...
        await publish(topic, failed, key, report(doc, dataset_id=thief_ds, reason="forged"), version=1),
        # ... or with its workspace too ...
        await publish(topic, failed, key, {**genuine, **elsewhere, "reason": "forged"}, version=1),
        # ... or the document's own dataset under another workspace.
        await publish(
            topic,
            "indexer.document.indexed",
            key,
            {**genuine, "workspace_id": str(thief_workspace), "segment_count": 666},
            version=1,
        ),
    ]
    # A genuine report after them: applied, so the consumer did read past the forged ones.
    honest = await publish(topic, "indexer.document.indexing", key, genuine, version=1)
    await consumed(stack.console_group, [*forged, honest])

    after = await victim.document(ds, doc["id"])
    assert (after["indexing_status"], after["indexing_error"], after["segment_count"]) == (
        "indexing",
        None,
        0,
    )
    outcomes = dict(
        stack.console_rows(
            "SELECT event_id, outcome FROM inbox WHERE consumer = %s AND event_id = ANY(%s)",
            stack.console_group,
            [s.event_id for s in [*forged, honest]],
        )
    )
    assert [outcomes[s.event_id] for s in forged] == ["dead", "dead", "dead"]
    assert outcomes[honest.event_id] == "applied"
