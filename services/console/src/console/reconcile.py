"""Does the search index agree with console? The logic of `make reconcile` and `make rebuild-index`;
scripts/projection.py only drives it (arguments, the rebuild's pace, printing).

Console's documents (id, version, searchable = enabled and not archived; a deleted document is absent) are
compared with what the index holds, each side read in a read-only transaction of its own database. The
index is read through a `ReadIndex` handed in (`indexer.documents.service.held`), so console depends on
no indexer code and neither service's database is written by the other. Drift kinds: `missing` (console
has it, the index does not), `stale version` (the index holds an older version), `wrong searchability`
(same version, searchable differs), `orphaned` (the index serves a document console no longer has). Drift
must survive a second look `settle_s` seconds later with console unchanged, so a change still in flight
through relay and consumer is not reported.

Repairs go through the normal path only: console re-announces documents through its own outbox
(console.snapshots: `console.document.snapshot`, same version, applied by the indexer when its version is
not newer) and the indexer's consumer applies them.

The rebuild re-snapshots every document in id order, a chunk per console transaction with the cursor row
(`snapshot_runs`) advanced in the same transaction, so a rerun after a crash resumes where it stopped;
then announces the orphans and waits until no drift remains. Snapshots carry new event ids (the indexer's
inbox never calls them duplicates) and console's current version, never lower than any version the
indexer's guard rows (`consumer_versions`) hold, whatever backup the indexer came back from.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from console import snapshots
from console.documents import repository
from console.snapshots import Progress
from servicekit.db import Database

RUN_NAME = "rebuild-index"


class IndexEntry(snapshots.Absent, Protocol):
    """What the index holds for a document (a deleted one stays there as a tombstone)."""

    @property
    def searchable(self) -> bool: ...
    @property
    def deleted(self) -> bool: ...


ReadIndex = Callable[[Sequence[uuid.UUID] | None], Awaitable[Mapping[uuid.UUID, IndexEntry]]]
"""The index's entries for the given document ids (every entry when None)."""


@dataclass(frozen=True, slots=True)
class ConsoleDoc:
    version: int
    searchable: bool


@dataclass(frozen=True, slots=True)
class Drift:
    document_id: uuid.UUID
    kind: str
    console: str
    index: str
    console_version: int | None


async def read_console(db: Database, ids: Sequence[uuid.UUID] | None = None) -> dict[uuid.UUID, ConsoleDoc]:
    """Console's documents of `ids` (all when None), read in a read-only transaction."""
    async with db.sessions() as session, session.begin():
        await repository.read_only(session)
        return {doc_id: ConsoleDoc(v, s) for doc_id, v, s in await repository.states(session, ids)}


def compare(console: Mapping[uuid.UUID, ConsoleDoc], index: Mapping[uuid.UUID, IndexEntry]) -> list[Drift]:
    """Console is read before the index: an index ahead of console's read is a later change, not drift."""
    drift: list[Drift] = []
    for doc_id, c in console.items():
        wanted = f"v{c.version} {'searchable' if c.searchable else 'hidden'}"
        i = index.get(doc_id)
        if i is None or i.deleted:
            drift.append(Drift(doc_id, "missing", wanted, "deleted" if i else "-", c.version))
        elif i.version < c.version:
            drift.append(Drift(doc_id, "stale version", wanted, f"v{i.version}", c.version))
        elif i.version == c.version and i.searchable != c.searchable:
            shown = "searchable" if i.searchable else "hidden"
            drift.append(Drift(doc_id, "wrong searchability", wanted, f"v{i.version} {shown}", c.version))
    for doc_id, i in index.items():
        if doc_id not in console and not i.deleted:
            drift.append(Drift(doc_id, "orphaned", "-", f"v{i.version}", None))
    return sorted(drift, key=lambda d: (d.kind, str(d.document_id)))


async def confirmed_drift(db: Database, read_index: ReadIndex, settle_s: float) -> list[Drift]:
    """Drift seen twice, `settle_s` apart, with console's version unchanged between the looks."""
    first = compare(await read_console(db), await read_index(None))
    if not first or settle_s <= 0:
        return first
    await asyncio.sleep(settle_s)
    ids = [d.document_id for d in first]
    again = {d.document_id: d for d in compare(await read_console(db, ids), await read_index(ids))}
    return [
        again[d.document_id]
        for d in first
        if d.document_id in again and again[d.document_id].console_version == d.console_version
    ]


async def repair(db: Database, read_index: ReadIndex, drift: Sequence[Drift]) -> int:
    """Console re-announces each drifted document (orphans: their deletion) through its outbox; returns
    how many."""
    orphans = [d.document_id for d in drift if d.kind == "orphaned"]
    present = [d.document_id for d in drift if d.kind != "orphaned"]
    absent = list((await read_index(orphans)).values()) if orphans else []
    async with db.unit_of_work() as uow:
        count = await snapshots.announce(uow, present)
        return count + await snapshots.announce_absent(uow, absent)


async def wait_converged(
    db: Database,
    read_index: ReadIndex,
    *,
    settle_s: float,
    wait_s: float,
    report: Callable[[int], None] | None = None,
) -> list[Drift]:
    """Confirmed drift, looked at again every half second until there is none or `wait_s` has passed;
    `report` is told how much remains after each look."""
    deadline = time.monotonic() + wait_s
    while True:
        drift = await confirmed_drift(db, read_index, settle_s)
        if report is not None:
            report(len(drift))
        if not drift or time.monotonic() > deadline:
            return drift
        await asyncio.sleep(0.5)


async def start_rebuild(db: Database, *, restart: bool) -> Progress:
    """Resume the rebuild's snapshot run (or start it: the first time, after it finished, or `restart`)."""
    async with db.unit_of_work() as uow:
        return await snapshots.start_run(uow, RUN_NAME, restart=restart)


async def rebuild_next(db: Database, chunk: int) -> Progress:
    """Snapshot the next `chunk` documents and advance the cursor: one console transaction."""
    async with db.unit_of_work() as uow:
        return await snapshots.snapshot_next(uow, RUN_NAME, chunk)


async def announce_orphans(db: Database, read_index: ReadIndex) -> int:
    """Announce the deletion of every document the index serves and console no longer has; how many."""
    console_ids = set(await read_console(db))
    orphans = [
        i for doc_id, i in (await read_index(None)).items() if doc_id not in console_ids and not i.deleted
    ]
    if not orphans:
        return 0
    async with db.unit_of_work() as uow:
        return await snapshots.announce_absent(uow, orphans)


async def finish_rebuild(db: Database) -> None:
    """Mark the run finished (call once no drift remains): the next rebuild starts over."""
    async with db.unit_of_work() as uow:
        await snapshots.finish_run(uow, RUN_NAME)
