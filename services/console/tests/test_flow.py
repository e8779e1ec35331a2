"""The seed's scenario end to end: console → outbox → relay → indexer → report → console."""

from __future__ import annotations

from testsupport import wait_until

from .conftest import Api


async def test_create_enable_search_disable_archive_unarchive_delete(api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    doc = await api.create_document(ds, "Photosynthesis converts light into chemical energy.", enabled=False)
    doc_id = doc["id"]
    assert (doc["version"], doc["enabled"], doc["indexing_status"]) == (1, False, "waiting")

    settled = await api.settled(ds, doc_id)
    assert settled["indexing_status"] == "completed" and settled["segment_count"] == 1
    assert await api.search(ds, "photosynthesis") == []  # indexed, but disabled

    assert (await api.action(ds, "enable", doc_id)).status_code == 200
    hits = await wait_until(lambda: api.search(ds, "photosynthesis"), what="searchable after enable")
    assert (
        hits[0]["document_id"] == doc_id and "Photosynthesis" in hits[0]["snippet"] and hits[0]["score"] > 0
    )
    assert (await api.settled(ds, doc_id))["version"] == 2

    async def gone() -> bool:
        return await api.search(ds, "photosynthesis") == []

    assert (await api.action(ds, "disable", doc_id)).status_code == 200
    await wait_until(gone, what="not searchable after disable")
    indexed = await api.indexed(doc_id)
    assert indexed is not None and indexed["segment_count"] == 1 and not indexed["searchable"]  # kept

    assert (await api.action(ds, "enable", doc_id)).status_code == 200
    await wait_until(lambda: api.search(ds, "photosynthesis"), what="searchable again")
    assert (await api.action(ds, "archive", doc_id)).status_code == 200
    await wait_until(gone, what="not searchable after archive")
    assert (await api.action(ds, "un_archive", doc_id)).status_code == 200
    await wait_until(lambda: api.search(ds, "photosynthesis"), what="searchable after un_archive")

    final = await api.settled(ds, doc_id)
    assert final["version"] == 6 and final["indexing_status"] == "completed"
    indexed = await api.indexed(doc_id)
    assert indexed is not None and indexed["version"] == final["version"] and indexed["searchable"]

    assert (await api.console.delete(f"/console/api/datasets/{ds}/documents/{doc_id}")).status_code == 204
    await wait_until(gone, what="gone after delete")
    assert await wait_until(lambda: _is_none(api.indexed(doc_id)), what="index forgot the document")


async def _is_none(awaitable: object) -> bool:
    return (await awaitable) is None  # type: ignore[misc]


async def test_update_reindexes_the_new_text(api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    doc_id = (await api.create_document(ds, "Volcanoes erupt molten rock."))["id"]
    await wait_until(lambda: api.search(ds, "volcano"), what="first text searchable")
    r = await api.console.patch(
        f"/console/api/datasets/{ds}/documents/{doc_id}", json={"text": "Glaciers carve valleys."}
    )
    assert r.status_code == 200 and r.json()["version"] == 2
    await wait_until(lambda: api.search(ds, "glacier"), what="new text searchable")
    assert await api.search(ds, "volcano") == []
    assert (await api.settled(ds, doc_id))["indexing_status"] == "completed"


async def test_whitespace_text_ends_in_error_status(api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    doc_id = (await api.create_document(ds, " \n\n \t "))["id"]
    settled = await api.settled(ds, doc_id)
    assert settled["indexing_status"] == "error" and "no indexable text" in settled["indexing_error"]


async def test_deleting_a_dataset_removes_its_documents_from_the_index(api: Api) -> None:
    ds = (await api.create_dataset())["id"]
    ids = [(await api.create_document(ds, f"Nebula number {i} glows."))["id"] for i in range(3)]
    await wait_until(lambda: _count(api, ds, "nebula", 3), what="three documents searchable")
    assert (await api.console.delete(f"/console/api/datasets/{ds}")).status_code == 204
    for doc_id in ids:
        await wait_until(lambda d=doc_id: _is_none(api.indexed(d)), what="document removed from the index")
    assert (await api.console.get(f"/console/api/datasets/{ds}")).status_code == 404


async def _count(api: Api, ds: str, q: str, n: int) -> bool:
    return len(await api.search(ds, q)) == n
