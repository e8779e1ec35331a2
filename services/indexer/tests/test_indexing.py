"""The indexer applies console's events once and in version order, and reports back through its outbox."""

from __future__ import annotations

import uuid

import httpx

from outbox.kafka import bootstrap_from_env
from outbox.testing import headers_of, read_topic, wire
from testsupport import wait_until
from testsupport.tokens import TestTokenIssuer

from .conftest import Client, Doc, Indexer, consumed


async def indexed_at(client: Client, doc: Doc) -> dict[str, object] | None:
    got = await client.document(doc.id)
    return got if got is not None and got["version"] == doc.version else None


async def test_lifecycle_searchability_and_reports(indexer: Indexer, client: Client) -> None:
    doc = Doc(
        owner=client.account, text="Kangaroos hop across Australia.\n\nKoalas sleep in eucalyptus trees."
    )
    await doc.send("created")
    got = await wait_until(lambda: indexed_at(client, doc), what="created indexed")
    assert (got["segment_count"], got["searchable"]) == (2, True)
    hits = await client.search(doc.dataset_id, "koala")
    assert len(hits) == 1 and hits[0]["document_id"] == str(doc.id) and "Koalas" in hits[0]["snippet"]
    assert set(hits[0]) == {"document_id", "segment_id", "score", "snippet"}

    await doc.send("disabled", enabled=False)
    got = await wait_until(lambda: indexed_at(client, doc), what="disabled applied")
    assert (got["segment_count"], got["searchable"]) == (2, False)  # segments kept, not searchable
    assert await client.search(doc.dataset_id, "koala") == []

    await doc.send("enabled", enabled=True)
    await wait_until(lambda: indexed_at(client, doc), what="enabled applied")
    assert len(await client.search(doc.dataset_id, "kangaroo")) == 1
    await doc.send("archived", archived=True)
    await wait_until(lambda: indexed_at(client, doc), what="archived applied")
    assert await client.search(doc.dataset_id, "kangaroo") == []
    await doc.send("unarchived", archived=False)
    await wait_until(lambda: indexed_at(client, doc), what="unarchived applied")
    assert len(await client.search(doc.dataset_id, "kangaroo")) == 1

    await doc.send("updated", text="Penguins waddle on ice.")
    await wait_until(lambda: indexed_at(client, doc), what="updated applied")
    assert await client.search(doc.dataset_id, "kangaroo") == []
    assert len(await client.search(doc.dataset_id, "penguin")) == 1

    await doc.send("deleted")
    await wait_until(lambda: _gone(client, doc), what="deleted")
    assert await client.search(doc.dataset_id, "penguin") == []
    assert indexer.rows("SELECT count(*) FROM segments WHERE document_id = %s", doc.id) == [(0,)]

    reports = [(t, v) for t, v, _ in indexer.reports(str(doc.id))]
    assert reports == [
        ("indexer.document.indexing", 1),
        ("indexer.document.indexed", 1),
        ("indexer.document.indexed", 2),
        ("indexer.document.indexed", 3),
        ("indexer.document.indexed", 4),
        ("indexer.document.indexed", 5),
        ("indexer.document.indexing", 6),
        ("indexer.document.indexed", 6),
    ]
    last = indexer.reports(str(doc.id))[-1][2]
    assert (last["segment_count"], last["searchable"], last["document_id"]) == (1, True, str(doc.id))


async def _gone(client: Client, doc: Doc) -> bool:
    return await client.document(doc.id) is None


async def test_blank_text_reports_index_failed(indexer: Indexer, client: Client) -> None:
    doc = Doc(owner=client.account, text="   \n\n  ")
    sent = await doc.send("created")
    await consumed(indexer.group, [sent])
    reports = indexer.reports(str(doc.id))
    assert [(t, v) for t, v, _ in reports] == [
        ("indexer.document.indexing", 1),
        ("indexer.document.index_failed", 1),
    ]
    assert "no indexable text" in reports[-1][2]["reason"]


async def test_stale_duplicate_and_reordered_events_change_nothing(indexer: Indexer, client: Client) -> None:
    doc = Doc(owner=client.account, text="Meteors streak at night.")
    v1 = await doc.send("created")
    v1_state = doc.state()
    v2 = await doc.send("disabled", enabled=False)
    v3 = await doc.send("enabled", enabled=True)
    await wait_until(lambda: indexed_at(client, doc), what="v3 applied")
    snapshot = indexer.rows("SELECT * FROM indexed_documents WHERE id = %s", doc.id)
    segments = indexer.rows("SELECT id, content FROM segments WHERE document_id = %s", doc.id)
    reports = indexer.reports(str(doc.id))

    sent = [
        # exact duplicates, in reverse order
        await doc.publish_state("enabled", 3, doc.state(), v3.event_id),
        await doc.publish_state("disabled", 2, {**doc.state(), "enabled": False}, v2.event_id),
        await doc.publish_state("created", 1, v1_state, v1.event_id),
        # older states as new events: stale for the version guard
        await doc.publish_state("disabled", 2, {**doc.state(), "enabled": False}),
        await doc.publish_state("updated", 1, {**v1_state, "text": "Something else entirely."}),
        # the current version again as a new event: the document's own version check ignores it
        await doc.publish_state("disabled", 3, {**doc.state(), "enabled": False}),
    ]
    await consumed(indexer.group, sent)
    assert indexer.rows("SELECT * FROM indexed_documents WHERE id = %s", doc.id) == snapshot
    assert indexer.rows("SELECT id, content FROM segments WHERE document_id = %s", doc.id) == segments
    assert indexer.reports(str(doc.id)) == reports
    assert len(await client.search(doc.dataset_id, "meteor")) == 1


async def test_search_sees_only_the_callers_documents(indexer: Indexer, client: Client) -> None:
    mine = Doc(owner=client.account, text="Saturn has rings.")
    theirs = Doc(owner=uuid.uuid4(), dataset_id=mine.dataset_id, text="Saturn has moons.")
    await mine.send("created")
    await theirs.send("created")
    await wait_until(lambda: indexed_at(client, mine), what="mine indexed")
    await consumed(indexer.group, [await theirs.publish_state("enabled", theirs.version, theirs.state())])
    hits = await client.search(mine.dataset_id, "saturn")
    assert [h["document_id"] for h in hits] == [str(mine.id)]
    assert await client.document(theirs.id) is None  # another workspace's document: 404


async def test_ranking_and_limit(indexer: Indexer, client: Client) -> None:
    dataset = uuid.uuid4()
    strong = Doc(
        owner=client.account, dataset_id=dataset, text="Rust rust rust: iron oxide, rust everywhere."
    )
    weak = Doc(owner=client.account, dataset_id=dataset, text="A little rust on the gate.")
    await strong.send("created")
    await weak.send("created")
    await wait_until(lambda: indexed_at(client, weak), what="weak indexed")
    await wait_until(lambda: indexed_at(client, strong), what="strong indexed")
    hits = await client.search(dataset, "rust")
    assert [h["document_id"] for h in hits] == [str(strong.id), str(weak.id)]
    assert hits[0]["score"] > hits[1]["score"]
    assert len(await client.search(dataset, "rust", limit=1)) == 1


async def test_errors_and_openapi(indexer: Indexer, client: Client) -> None:
    async with httpx.AsyncClient(base_url=indexer.api.base_url) as anonymous:
        spec = await anonymous.get("/openapi.json")
        assert spec.status_code == 200 and "/indexer/api/search" in spec.json()["paths"]
        assert (
            await anonymous.get("/indexer/api/search", params={"dataset_id": str(uuid.uuid4()), "q": "x"})
        ).status_code == 401
        forged = TestTokenIssuer().token(client.account)
        r = await anonymous.get(
            f"/indexer/api/documents/{uuid.uuid4()}", headers={"Authorization": f"Bearer {forged}"}
        )
        assert r.status_code == 401
    for params in (
        {"q": "x"},
        {"dataset_id": "nope", "q": "x"},
        {"dataset_id": str(uuid.uuid4())},
        {"dataset_id": str(uuid.uuid4()), "q": "x", "limit": 0},
        {"dataset_id": str(uuid.uuid4()), "q": "x", "limit": 101},
    ):
        r = await client.http.get("/indexer/api/search", params=params)
        assert r.status_code == 422, params
    assert (await client.http.get("/indexer/api/documents/not-a-uuid")).status_code == 422
    r = await client.http.get(f"/indexer/api/documents/{uuid.uuid4()}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_snippets_escape_the_documents_markup_and_mark_only_the_matches(client: Client) -> None:
    """Security review, finding 8: before, ts_headline's snippet carried the document's raw HTML."""
    doc = Doc(owner=client.account, text='Wombats dig "<img src=x onerror=alert(1)>" burrows.')
    await doc.send("created")
    await wait_until(lambda: indexed_at(client, doc), what="created indexed")
    [hit] = await client.search(doc.dataset_id, "wombat")
    assert "<img" not in hit["snippet"] and "&lt;img src=x onerror=alert(1)&gt;" in hit["snippet"]
    assert hit["snippet"].startswith("<b>Wombats</b>")


async def test_an_event_naming_another_tenant_never_moves_a_document(indexer: Indexer) -> None:
    """Security review, finding 5: before, every event's owner_account_id was copied onto the document, so
    one forged event put a document's text into another tenant's search. Now the first event pins it."""
    owner = Client(indexer, uuid.uuid4())
    thief = Client(indexer, uuid.uuid4())
    try:
        doc = Doc(owner=owner.account, text="Quokkas smile for photographs.")
        await doc.send("created")
        await wait_until(lambda: indexed_at(owner, doc), what="created indexed")
        forged = {**doc.state(), "owner_account_id": str(thief.account), "version": doc.version + 1}
        sent = await doc.publish_state("updated", doc.version + 1, forged)
        doc.version += 1
        await doc.send("updated", text="Quokkas smile for photographs on Rottnest Island.")
        got = await wait_until(lambda: indexed_at(owner, doc), what="the owner's next change applied")
        assert got["version"] == 3
        assert [v for _, v, _ in indexer.reports(str(doc.id))].count(2) == 0  # the forged v2: never applied
        # ...and dead-lettered at once (it can never become right), not retried first.
        assert indexer.rows(
            "SELECT outcome FROM inbox WHERE consumer = %s AND event_id = %s", indexer.group, sent.event_id
        ) == [("dead",)]
        dead = await read_topic(bootstrap_from_env(), wire(f"{indexer.group}.dlq"), expect=1, timeout=10)
        [letter] = [headers_of(r) for r in dead if headers_of(r)["ce_id"] == str(sent.event_id)]
        assert letter["dlq_attempts"] == "1", letter
        assert await thief.search(doc.dataset_id, "quokka") == []
        assert len(await owner.search(doc.dataset_id, "rottnest")) == 1
    finally:
        await owner.http.aclose()
        await thief.http.aclose()
