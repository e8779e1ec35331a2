"""console.reconcile.compare: what counts as drift between console and the index (no database; the reads,
the second look and the repairs run on real processes in tests/e2e/test_operations.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from console.reconcile import ConsoleDoc, Drift, compare

DATASET, WORKSPACE = uuid.UUID(int=1), uuid.UUID(int=2)


@dataclass(frozen=True)
class Entry:
    """An `IndexEntry`, as `indexer.documents.service.held` gives them."""

    document_id: uuid.UUID
    version: int
    searchable: bool
    deleted: bool = False
    dataset_id: uuid.UUID = DATASET
    workspace_id: uuid.UUID = WORKSPACE
    owner_account_id: str = "owner"
    name: str = "doc"


def ids(n: int) -> list[uuid.UUID]:
    return sorted(uuid.uuid4() for _ in range(n))


def test_each_kind_of_drift_is_named_with_both_sides() -> None:
    missing, tombstoned, stale, hidden, orphan = ids(5)
    console = {
        missing: ConsoleDoc(1, True),
        tombstoned: ConsoleDoc(2, True),
        stale: ConsoleDoc(3, True),
        hidden: ConsoleDoc(4, True),
    }
    index = {
        tombstoned: Entry(tombstoned, 2, False, deleted=True),
        stale: Entry(stale, 2, True),
        hidden: Entry(hidden, 4, False),
        orphan: Entry(orphan, 7, True),
    }
    assert compare(console, index) == [
        Drift(missing, "missing", "v1 searchable", "-", 1),
        Drift(tombstoned, "missing", "v2 searchable", "deleted", 2),
        Drift(orphan, "orphaned", "-", "v7", None),
        Drift(stale, "stale version", "v3 searchable", "v2", 3),
        Drift(hidden, "wrong searchability", "v4 searchable", "v4 hidden", 4),
    ]


def test_agreement_an_index_ahead_and_a_deleted_document_tombstoned_are_not_drift() -> None:
    same, ahead, gone = ids(3)
    console = {same: ConsoleDoc(2, False), ahead: ConsoleDoc(3, True)}
    index = {
        same: Entry(same, 2, False),
        # Console is read first: a newer version in the index is a change made since, not drift.
        ahead: Entry(ahead, 4, False),
        gone: Entry(gone, 5, False, deleted=True),
    }
    assert compare(console, index) == []
