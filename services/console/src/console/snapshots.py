"""Console re-announces documents through its own outbox: the repair path of `make reconcile` and
`make rebuild-index` (console.reconcile). Nothing here changes a document or its version.

- `announce(ids)`: a `console.document.snapshot` event with each document's current state and version,
  recorded under a share lock so no change of that document commits between the read and the event
  (a concurrent writer waits, then records version + 1 after it: order per aggregate holds).
- `announce_absent(items)`: for documents the index still has but console no longer does (ids are never
  reused, so absence is final), a snapshot with `deleted: true` at the version the index holds.
- `snapshot_next(run, limit)`: the next `limit` documents in id order, with the run's cursor advanced in
  the same transaction: a crash leaves either both or neither, so a rerun resumes exactly there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from console.documents import repository
from console.documents.events import document_event
from console.models import Document, SnapshotRun, utcnow
from contracts.console import DocumentEventType, DocumentState
from outbox import Event
from servicekit.db import UnitOfWork


class Absent(Protocol):
    """What the index holds for a document console no longer has (identity fields only)."""

    @property
    def document_id(self) -> uuid.UUID: ...
    @property
    def version(self) -> int: ...
    @property
    def dataset_id(self) -> uuid.UUID: ...
    @property
    def workspace_id(self) -> uuid.UUID: ...
    @property
    def owner_account_id(self) -> str: ...
    @property
    def name(self) -> str: ...


def _snapshots(rows: Sequence[tuple[Document, str]]) -> list[Event]:
    return [document_event(doc, DocumentEventType.SNAPSHOT, owner_account_id=owner) for doc, owner in rows]


async def announce(uow: UnitOfWork, ids: Sequence[uuid.UUID]) -> int:
    """Snapshot events for those of `ids` console has; returns how many."""
    rows = await repository.with_owners(uow.session, ids=sorted(set(ids)), lock="share")
    uow.emit(*_snapshots(rows))
    return len(rows)


async def announce_absent(uow: UnitOfWork, items: Sequence[Absent]) -> int:
    """Deleted-state snapshots for documents console does not have (re-checked here); returns how many."""
    present = await repository.existing_ids(uow.session, [i.document_id for i in items])
    events = [
        DocumentState(
            document_id=item.document_id,
            dataset_id=item.dataset_id,
            workspace_id=item.workspace_id,
            owner_account_id=item.owner_account_id,
            name=item.name,
            text="",
            enabled=False,
            archived=False,
            deleted=True,
            version=item.version,
        ).to_event(DocumentEventType.SNAPSHOT)
        for item in items
        if item.document_id not in present
    ]
    uow.emit(*events)
    return len(events)


@dataclass(frozen=True, slots=True)
class Progress:
    announced: int
    total: int
    finished: bool


async def start_run(uow: UnitOfWork, name: str, *, restart: bool) -> Progress:
    """Resume the run `name` (or start it; a finished run, or `restart`, starts over)."""
    session = uow.session
    run = await repository.snapshot_run(session, name, lock="update")
    if run is None:
        run = SnapshotRun(name=name, after_id=None, announced=0, started_at=utcnow())
        session.add(run)
    elif restart or run.finished_at is not None:
        run.after_id, run.announced, run.started_at, run.finished_at = None, 0, utcnow(), None
    await session.flush()
    return Progress(run.announced, await repository.count(session), finished=False)


async def snapshot_next(uow: UnitOfWork, name: str, limit: int) -> Progress:
    """Announce the next `limit` documents after the run's cursor and advance it, in this transaction."""
    session = uow.session
    run = await repository.snapshot_run(session, name, lock="update")
    if run is None:
        raise LookupError(f"no snapshot run {name!r}: start it first")
    rows = await repository.with_owners(session, after=run.after_id, limit=limit, lock="share")
    uow.emit(*_snapshots(rows))
    if rows:
        run.after_id = rows[-1][0].id
        run.announced += len(rows)
    finished = len(rows) < limit
    await session.flush()
    return Progress(run.announced, await repository.count(session), finished=finished)


async def finish_run(uow: UnitOfWork, name: str) -> None:
    run = await repository.snapshot_run(uow.session, name, lock="update")
    if run is not None:
        run.finished_at = utcnow()
        await uow.session.flush()
