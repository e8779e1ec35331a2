"""The chaos test's load: concurrent HTTP clients changing documents, and rollbacks injected on purpose.

Clients share a user's dataset two by two, so their batches overlap. Every request's outcome is counted;
what was committed is read from console's database afterwards, not inferred from responses.

Rollbacks, two kinds:
- HTTP: a batch `enable` over a not-archived document and an archived one. Console changes the first in
  the request's unit of work (new version, event recorded), refuses the second (409) and rolls back.
- Direct: a transaction on console's database that rewrites a document (text = a unique marker word,
  version + 1000) and writes its event to the outbox with the library's OutboxWriter, holds the
  uncommitted rows while relays poll, then rolls back. Its event id and marker are the phantoms to watch.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import Event, OutboxWriter
from tests.e2e.client import DOCUMENTS, User

ACTIONS = ("enable", "disable", "archive", "un_archive")
WORDS = ("aurora", "basalt", "cirrus", "delta", "estuary", "fjord", "geyser", "harbor", "isthmus", "jetty")
PHANTOM_BUMP = 1000  # phantom versions are far above anything the storm commits


@dataclass
class Corpus:
    """One user's dataset and its live documents (shared by that user's clients)."""

    user: User
    ds: str
    docs: list[str]


@dataclass
class Phantom:
    event_id: str
    document_id: str
    version: int
    marker: str
    corpus: Corpus


@dataclass
class LoadStats:
    requests: int = 0
    ok: int = 0
    refused: int = 0  # 404/409: a rolled-back unit of work (or a document deleted by the other client)
    errors: dict[str, int] = field(default_factory=dict)
    http_rollbacks: int = 0  # injected batches answered 409
    phantoms: list[Phantom] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def client_loop(
    corpus: Corpus,
    stats: LoadStats,
    stop: asyncio.Event,
    *,
    seed: int,
    pace: float,
    max_requests: int,
    gate: asyncio.Event | None = None,
) -> None:
    """Random document changes at about 1/pace per second until `stop` or `max_requests`; each waits for
    `gate` (back-pressure) first."""
    rnd = random.Random(seed)
    for _ in range(max_requests):
        if gate is not None:
            await gate.wait()
        if stop.is_set():
            return
        started = time.monotonic()
        try:
            status = await _one_change(corpus, rnd)
        except Exception as exc:  # transport errors are counted, the storm goes on
            stats.error(type(exc).__name__)
        else:
            stats.requests += 1
            if status < 300:
                stats.ok += 1
            elif status in (404, 409):
                stats.refused += 1
            else:
                stats.error(f"HTTP {status}")
        # Pacing (a steady rate), not waiting for a condition.
        await asyncio.sleep(max(0.0, pace - (time.monotonic() - started)))


async def _one_change(c: Corpus, rnd: random.Random) -> int:
    roll = rnd.random()
    if roll < 0.05 or len(c.docs) < 4:
        body = {"name": "storm", "text": f"{rnd.choice(WORDS)} {uuid.uuid4().hex[:6]}", "enabled": True}
        r = await c.user.console.post(DOCUMENTS.format(ds=c.ds), json=body)
        if r.status_code == 201:
            c.docs.append(str(r.json()["id"]))
        return r.status_code
    if roll < 0.08:
        doc = rnd.choice(c.docs)
        r = await c.user.console.delete(DOCUMENTS.format(ds=c.ds) + f"/{doc}")
        if r.status_code in (204, 404) and doc in c.docs:
            c.docs.remove(doc)
        return r.status_code
    if roll < 0.25:
        doc = rnd.choice(c.docs)
        body = {"text": f"{rnd.choice(WORDS)} {rnd.choice(WORDS)} {uuid.uuid4().hex[:6]}"}
        r = await c.user.console.patch(DOCUMENTS.format(ds=c.ds) + f"/{doc}", json=body)
        return r.status_code
    ids = rnd.sample(c.docs, k=min(len(c.docs), rnd.randint(1, 3)))
    r = await c.user.action(c.ds, rnd.choice(ACTIONS), *ids)
    return r.status_code


async def http_rollback(c: Corpus, stats: LoadStats, rnd: random.Random) -> None:
    """Archive one document, then batch-enable it with another: 409, the whole batch rolls back."""
    if len(c.docs) < 2:
        return
    archived, other = rnd.sample(c.docs, k=2)
    if (await c.user.action(c.ds, "archive", archived)).status_code != 200:
        return
    await c.user.action(c.ds, "un_archive", other)
    r = await c.user.action(c.ds, "enable", other, archived)
    if r.status_code == 409:
        stats.http_rollbacks += 1


async def direct_rollback(engine: AsyncEngine, c: Corpus, stats: LoadStats, rnd: random.Random) -> None:
    """Change a document and write its event with OutboxWriter in one transaction, then roll it back."""
    if not c.docs:
        return
    doc = rnd.choice(c.docs)
    marker = f"phantom{uuid.uuid4().hex[:10]}"
    async with engine.connect() as conn:
        tx = await conn.begin()
        try:
            row = (
                await conn.execute(
                    text(
                        "UPDATE documents d SET text = :text, version = version + :bump, updated_at = now() "
                        "FROM workspaces w WHERE d.id = :id AND w.id = d.workspace_id "
                        "RETURNING d.dataset_id, d.workspace_id, d.name, d.version, w.owner_account_id"
                    ),
                    {"text": marker, "bump": PHANTOM_BUMP, "id": doc},
                )
            ).one_or_none()
            if row is None:
                return  # deleted meanwhile
            event = Event(
                topic="console.document",
                type="console.document.updated",
                aggregate_id=doc,
                version=int(row.version),
                data={
                    "document_id": doc,
                    "dataset_id": str(row.dataset_id),
                    "workspace_id": str(row.workspace_id),
                    "owner_account_id": row.owner_account_id,
                    "name": row.name,
                    "text": marker,
                    "enabled": True,
                    "archived": False,
                    "deleted": False,
                },
            )
            await OutboxWriter(source="console").add(conn, event)
            stats.phantoms.append(Phantom(str(event.id), doc, int(row.version), marker, c))
            # Keep the uncommitted change and outbox row in place while the relay polls and
            # other transactions commit around them (injected timing, not a wait for a condition).
            await asyncio.sleep(rnd.uniform(0.05, 0.3))
        finally:
            await tx.rollback()


async def rollback_loop(
    console_url: str,
    corpora: list[Corpus],
    stats: LoadStats,
    stop: asyncio.Event,
    *,
    every: float,
    gate: asyncio.Event | None = None,
) -> None:
    """Alternate HTTP and direct rollbacks every `every` seconds until `stop`, each after `gate`."""
    rnd = random.Random(7)
    engine = create_async_engine(console_url, pool_size=1)
    try:
        n = 0
        while not stop.is_set():
            if gate is not None:
                await gate.wait()
            corpus = corpora[n % len(corpora)]
            try:
                if n % 2:
                    await http_rollback(corpus, stats, rnd)
                else:
                    await direct_rollback(engine, corpus, stats, rnd)
            except Exception as exc:
                stats.error(f"rollback {type(exc).__name__}")
            n += 1
            await asyncio.sleep(every)  # pacing
    finally:
        await engine.dispose()
