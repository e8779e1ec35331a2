"""Row locks in console's repositories: one spelling, `lock: Lock | None`, mapped to SQL in one place."""

from __future__ import annotations

from typing import Literal, TypeVar

from sqlalchemy.sql.selectable import GenerativeSelect

from console.models import Base

Lock = Literal["share", "update"]
"""`share` (FOR SHARE): the row may not change until this transaction ends, other readers still lock it
(adding a document to a dataset, snapshotting a document); `update` (FOR UPDATE): this transaction changes
or deletes the row, so writers of it queue up."""

S = TypeVar("S", bound=GenerativeSelect)


def with_lock(stmt: S, lock: Lock | None, *, of: type[Base] | None = None) -> S:
    """`stmt` taking `lock` on its rows (only on `of`'s when it joins other tables); unchanged for None."""
    if lock is None:
        return stmt
    return stmt.with_for_update(read=lock == "share", of=of)
