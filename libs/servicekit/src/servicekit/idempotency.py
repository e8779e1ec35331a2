"""Idempotency keys for unsafe HTTP requests (`Idempotency-Key` header), kept in the service's own database.

The key is claimed *first*, in the same transaction as the change it protects, by inserting
(scope, key, fingerprint). A concurrent request with the same key blocks on the primary key until the
first transaction ends: if it committed, the second one finds the stored response and replays it; if it
rolled back, the second one claims the key and runs. So the change, its events and the stored response
commit together or not at all, and a retried request never applies twice.

Failed requests roll back, so their keys are not kept: retrying a request that failed is safe because it
changed nothing. Stored responses are purged after a retention period (`purge_loop`): a client retries
within minutes, not days, and the table must not grow forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from servicekit.errors import Conflict, Unprocessable

log = logging.getLogger("servicekit.idempotency")

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

metadata = MetaData()

idempotency_keys_table = Table(
    "idempotency_keys",
    metadata,
    Column("scope", Text, nullable=False),  # whose key: an account id, so two callers never collide
    Column("key", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("scope", "key", name="pk_idempotency_keys"),
)


def create_tables(connection: object) -> None:
    """Create the table; call from an Alembic migration: `create_tables(op.get_bind())`."""
    metadata.create_all(connection)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    body: str


def validate_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Unprocessable(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters")
    return key


def request_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two requests "the same": method, path with query string, and the exact body bytes."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), query.encode(), hashlib.sha256(body).digest()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def claim(session: AsyncSession, *, scope: str, key: str, fingerprint: str) -> StoredResponse | None:
    """Claim `key` for this request in the session's transaction.

    Returns None when the key is new (the caller runs the request and calls `complete`), or the stored
    response of the first request with this key. Raises 422 when the key was used for another request.
    """
    t = idempotency_keys_table
    claimed = await session.execute(
        pg_insert(t)
        .values(scope=scope, key=key, fingerprint=fingerprint)
        .on_conflict_do_nothing(index_elements=[t.c.scope, t.c.key])
        .returning(t.c.key)
    )
    if claimed.first() is not None:
        return None
    row = (
        await session.execute(
            select(t.c.fingerprint, t.c.status_code, t.c.response_body).where(
                t.c.scope == scope, t.c.key == key
            )
        )
    ).first()
    if row is None or row.status_code is None:
        # Cannot happen with claim and complete in one transaction; refuse rather than run twice.
        raise Conflict(f"a request with this {HEADER} is still in progress; retry later")
    if row.fingerprint != fingerprint:
        raise Unprocessable(
            f"{HEADER} {key!r} was already used for a different request (method, path or body differ); "
            "use a new key for a new request"
        )
    return StoredResponse(status_code=row.status_code, body=row.response_body or "")


async def complete(session: AsyncSession, *, scope: str, key: str, status_code: int, body: str) -> None:
    """Store the response of the request that claimed `key` (same transaction as its change)."""
    t = idempotency_keys_table
    await session.execute(
        update(t)
        .where(t.c.scope == scope, t.c.key == key)
        .values(status_code=status_code, response_body=body)
    )


_PURGE = text(
    "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
    " WHERE created_at < now() - make_interval(secs => :age) LIMIT :limit)"
)


async def purge_expired(session: AsyncSession, *, older_than: timedelta, limit: int = 1000) -> int:
    """Delete up to `limit` stored keys older than `older_than` (bounded: short transactions, no bloat)."""
    result = await session.execute(_PURGE, {"age": older_than.total_seconds(), "limit": limit})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def purge_loop(
    sessions: async_sessionmaker[AsyncSession], *, retention: timedelta, interval_seconds: float = 300.0
) -> None:
    """Runs for the service's lifetime (every process may run it: the DELETE is idempotent)."""
    while True:
        try:
            while True:
                async with sessions() as session, session.begin():
                    purged = await purge_expired(session, older_than=retention)
                if purged:
                    log.info("purged %d idempotency keys older than %s", purged, retention)
                if purged < 1000:
                    break
        except Exception:  # the database is down: next round
            log.warning("could not purge idempotency keys; retrying", exc_info=True)
        await asyncio.sleep(interval_seconds)
