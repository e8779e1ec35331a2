"""Applies a document's state from console's events to the index, once and in version order.

The inbox already drops redelivered events and the library's version guard drops older ones; the
document row's own version is the domain's guard (it also survives a renamed consumer group): an event
whose version is not newer than what is indexed changes nothing.

Disabled or archived documents keep their segments but are not searchable; a deleted document loses its
segments and stays as a tombstone. Each applied version is reported back in the same transaction.

Tenancy comes from the indexer's own state: the first event of a document pins its dataset, workspace and
owner, and a later event that names others is refused (dead-lettered), never applied. So an event forged or
mistaken on the topic cannot move a document, and its text, into another tenant's search. (Who may produce
to `console.document` at all is the broker's ACL: see ARCHITECTURE.md.)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.console import DocumentState
from indexer.indexing import reports as report
from indexer.indexing import repository
from indexer.indexing.segmentation import split, text_sha256
from indexer.models import IndexedDocument, utcnow
from outbox import Event, Reject

NO_TEXT_REASON = "the document has no indexable text"


class TenancyMismatch(Reject):
    """An event names another dataset, workspace or owner than the document was first indexed under: never
    applied, dead-lettered at once (no retries: it cannot become right), like console's reports."""


class Changes(Protocol):
    """A unit of work: the session of the transaction, and `emit` for the reports that commit with it. The
    consumer's `EventContext` is one (the message's transaction); so is servicekit's `UnitOfWork`."""

    @property
    def session(self) -> AsyncSession: ...

    def emit(self, *events: Event) -> None: ...


class Outcome(StrEnum):
    STALE = "stale"
    REMOVED = "removed"
    INDEXED = "indexed"
    FAILED = "failed"


async def apply(uow: Changes, state: DocumentState, *, snapshot: bool = False) -> Outcome:
    """`snapshot`: console re-announced its current state without a change (reconcile, rebuild-index):
    applied when the index's version is not newer, so an index that lost or botched that version recovers."""
    session = uow.session
    current = await repository.lock(session, state.document_id)
    if current is not None and (
        current.deleted
        or current.version > state.version
        or (current.version == state.version and not snapshot)
    ):
        return Outcome.STALE
    if current is not None and _tenancy(current) != _tenancy(state):
        raise TenancyMismatch(
            f"document {state.document_id} belongs to another dataset/workspace/owner than this event names"
        )
    if state.deleted:
        await _remove(session, current, state)
        return Outcome.REMOVED

    reports: list[Event] = []
    if current is None:
        current = IndexedDocument(id=state.document_id, text_sha256="", segment_count=0)
        session.add(current)
    _copy_state(current, state)
    digest = text_sha256(state.text)
    if snapshot or current.text_sha256 != digest:  # a snapshot also rebuilds segments a restore lost
        reports.append(report.indexing(state))
        segments = split(state.document_id, state.text)
        await session.flush()  # the document row exists before its segments reference it
        await repository.replace_segments(session, state.document_id, segments)
        current.text_sha256 = digest
        current.segment_count = len(segments)
    await session.flush()
    if current.segment_count == 0:
        reports.append(report.index_failed(state, reason=NO_TEXT_REASON))
        outcome = Outcome.FAILED
    else:
        reports.append(
            report.indexed(state, segment_count=current.segment_count, searchable=current.searchable)
        )
        outcome = Outcome.INDEXED
    uow.emit(*reports)
    return outcome


def _tenancy(row: IndexedDocument | DocumentState) -> tuple[str, str, str]:
    return (str(row.dataset_id), str(row.workspace_id), str(row.owner_account_id))


def _copy_state(document: IndexedDocument, state: DocumentState) -> None:
    document.dataset_id = state.dataset_id
    document.workspace_id = state.workspace_id
    document.owner_account_id = state.owner_account_id
    document.name = state.name
    document.version = state.version
    document.enabled = state.enabled
    document.archived = state.archived
    document.deleted = False
    document.updated_at = utcnow()


async def _remove(session: AsyncSession, current: IndexedDocument | None, state: DocumentState) -> None:
    if current is None:
        current = IndexedDocument(id=state.document_id)
        session.add(current)
    else:
        await repository.delete_segments(session, state.document_id)
    _copy_state(current, state)
    current.deleted = True
    current.text_sha256 = ""
    current.segment_count = 0
    await session.flush()
