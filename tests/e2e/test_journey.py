"""The user journey through the whole system: auth → console → outbox → relay → broker → indexer → report →
console, every hop a real process. One trace covers the enable request from console's HTTP span to
console's consumption of the indexer's report."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from tests.e2e import spans
from tests.e2e.client import User
from tests.e2e.system import System
from testsupport import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
async def user(system: System) -> AsyncIterator[User]:
    u = await User.signed_up(system, "journey")
    yield u
    await u.aclose()


async def test_register_to_delete(system: System, user: User) -> None:
    ds = await user.create_dataset()
    docs = [
        (await user.create_document(ds, text, enabled=False))["id"]
        for text in ("Photosynthesis turns light into sugar.", "Photosynthesis happens in chloroplasts.")
    ]
    for doc in docs:
        first = await user.settled(ds, doc, 1)
        assert first["indexing_status"] == "completed" and not first["enabled"]
    assert await user.search(ds, "photosynthesis") == []  # indexed, not enabled

    async def finds_both() -> bool:
        return sorted(await user.search(ds, "photosynthesis")) == sorted(docs)

    async def finds_none() -> bool:
        return await user.search(ds, "photosynthesis") == []

    r = await user.action(ds, "enable", *docs)
    assert r.status_code == 200, r.text
    assert [d["version"] for d in r.json()["data"]] == [2, 2]
    await wait_until(finds_both, what="both documents searchable after enable")
    for doc in docs:
        assert (await user.settled(ds, doc, 2))["indexing_status"] == "completed"

    version = 2
    for action, searchable in (("disable", False), ("archive", False), ("un_archive", False)):
        r = await user.action(ds, action, *docs)
        assert r.status_code == 200, r.text
        version += 1
        assert all(d["version"] == version for d in r.json()["data"])
        await wait_until(finds_none, what=f"nothing searchable after {action}")
        for doc in docs:
            assert (await user.settled(ds, doc, version))["indexing_status"] == "completed"
            served = await user.indexed(doc)
            assert served is not None and (served["version"], served["searchable"]) == (version, searchable)

    # un_archive restores the disabled state; enabling once more makes them searchable again.
    assert (await user.action(ds, "enable", *docs)).status_code == 200
    await wait_until(finds_both, what="searchable after un_archive + enable")
    for doc in docs:
        assert (await user.settled(ds, doc, version + 1))["indexing_status"] == "completed"

    for doc in docs:
        r = await user.console.delete(f"/console/api/datasets/{ds}/documents/{doc}")
        assert r.status_code == 204, r.text
    await wait_until(finds_none, what="nothing searchable after delete")
    for doc in docs:
        await wait_until(lambda d=doc: _not_indexed(user, d), what=f"index forgot {doc}")
        assert (await user.console.get(f"/console/api/datasets/{ds}/documents/{doc}")).status_code == 404


async def _not_indexed(user: User, doc: str) -> bool:
    return await user.indexed(doc) is None


async def test_one_trace_from_enable_request_to_status_update(system: System, user: User) -> None:
    ds = await user.create_dataset()
    doc = (await user.create_document(ds, "Mitochondria make ATP.", enabled=False))["id"]
    await user.settled(ds, doc, 1)
    r = await user.action(ds, "enable", doc)
    assert r.status_code == 200, r.text
    await user.settled(ds, doc, 2)

    def enable_request(s: spans.Span) -> bool:
        return (
            s["service"] == "console"
            and s["kind"] == "SERVER"
            and "/status/{action}/batch" in s["name"]
            and doc in s["attributes"].get("http.url", s["attributes"].get("url.query", ""))
        )

    async def trace_complete() -> list[spans.Span] | None:
        found = spans.find(spans.load(system.spans_file), enable_request)
        if not found:
            return None
        trace = spans.in_trace(spans.load(system.spans_file), found[0]["trace_id"])
        return (
            trace
            if {"console-relay", "indexer-consumer", "indexer-relay", "console-consumer"}
            <= {s["service"] for s in trace}
            else None
        )

    try:
        trace = await wait_until(trace_complete, timeout=15, what="spans of the enable trace")
    except AssertionError:
        every = spans.load(system.spans_file)
        print(spans.describe([s for s in every if s["kind"] != "INTERNAL"]))
        raise
    print(spans.describe(trace))

    # The chain, parent by parent: HTTP request → relay publish → indexer process → indexer's relay publish
    # → console consumer processing the report. The HTTP span is the root (no incoming traceparent).
    request = spans.find(trace, enable_request)[0]
    assert request["parent_id"] is None
    chain = [request]
    for service, kind, name in (
        ("console-relay", "PRODUCER", "send console.document"),
        ("indexer-consumer", "CONSUMER", "process console.document"),
        ("indexer-relay", "PRODUCER", "send indexer.document"),
        ("console-consumer", "CONSUMER", "process indexer.document"),
    ):
        want = (service, kind, name, chain[-1]["span_id"])
        children = [s for s in trace if (s["service"], s["kind"], s["name"], s["parent_id"]) == want]
        assert children, f"no {service} {name!r} span under {chain[-1]['name']!r}:\n{spans.describe(trace)}"
        chain.append(children[0])

    # Both sides of each hop name the same (logical) destination, although topics carry a prefix on the wire.
    for producer, consumer in ((chain[1], chain[2]), (chain[3], chain[4])):
        names = {str(s["attributes"]["messaging.destination.name"]) for s in (producer, consumer)}  # type: ignore[index]
        assert names == {str(producer["name"]).removeprefix("send ")}, names

    # Redis is traced too: console's token check asks the deny list under the request.
    redis_calls = [s for s in trace if "redis" in {str(v) for v in s["attributes"].values()}]  # type: ignore[union-attr]
    assert redis_calls, spans.describe(trace)

    # The database legs: the request's transaction writes the outbox row; inside the indexer's processing
    # span the version guard and the indexed document are written (the inbox rows go in once per fetched batch,
    # before the per-message spans); console's consumer updates the document.
    def statements_under(span: dict[str, object]) -> str:
        return "\n".join(
            str(s["attributes"].get("db.statement", ""))  # type: ignore[union-attr]
            for s in trace
            if s["parent_id"] == span["span_id"] and s["kind"] == "CLIENT"
        )

    assert "INSERT INTO outbox" in statements_under(request), spans.describe(trace)
    indexer_process, console_process = chain[2], chain[4]
    indexer_sql, console_sql = statements_under(indexer_process), statements_under(console_process)
    assert "consumer_versions" in indexer_sql and "UPDATE indexed_documents" in indexer_sql, indexer_sql
    assert "INSERT INTO outbox" in indexer_sql, indexer_sql  # its report, in the same transaction
    assert "documents" in console_sql, console_sql


async def test_every_process_of_a_service_connects_as_its_app_role_which_may_not_change_the_schema(
    system: System, user: User
) -> None:
    """Least privilege, as deployed: the journey's API, relay and consumer sessions all belong to
    `<service>_app` (servicekit.pgroles), and that role is refused DDL."""
    await user.create_dataset()  # every process of console and auth has done some work by now
    for service in ("auth", "console", "indexer"):
        sessions = system.rows(
            service,
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        assert sessions == [(f"{service}_app",)], (service, sessions)
    with psycopg.connect(system.database_urls["console"].replace("+psycopg", ""), autocommit=True) as app:
        for statement in ("CREATE TABLE stolen (a int)", "DROP TABLE inbox", "TRUNCATE outbox"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
