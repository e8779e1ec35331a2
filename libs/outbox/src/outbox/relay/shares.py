"""Shares: several relays on one outbox split its aggregates instead of contending for them.

Aggregates fall into `total` shares by a hash of their id. Each relay holds a session advisory lock per
share it publishes (on a connection of its own), and one shared "present" lock that lets every relay count
the others; about once a second it rebalances: with n relays present it keeps `ceil(total / n)` shares,
letting go of extras and taking free ones. Its claims then only look at rows of its shares, so two relays
never hold each other's aggregates back (measured before: two relays on one backlog drained slower than
one). A relay that dies loses its locks with its connection, and the others take its shares at their next
rebalance.

Shares are an optimisation, not the ordering guarantee: that stays with the claim (row locks, the gap
check), so a share changing hands while its old owner still has a batch in flight cannot reorder an
aggregate; at worst the new owner's claim holds that aggregate back until the batch commits.
"""

from __future__ import annotations

import contextlib
import logging
import math

import psycopg

from outbox.log_throttle import LogThrottle

log = logging.getLogger("outbox.relay")

# Advisory lock keys (two int4 form, so they show in pg_locks as classid/objid): one namespace for the
# shares, one for presence. Arbitrary constants, unlikely to collide with an application's own locks.
SHARE_LOCKS = 0x0B0C5A
PRESENT_LOCK = 0x0B0C5B

_PRESENT = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND classid = %(ns)s AND objid = 0 AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
# Stops at `need` locks taken (a filter under a LIMIT runs only until the limit is met).
_TAKE = "SELECT s FROM unnest(%(candidates)s::integer[]) AS s WHERE pg_try_advisory_lock(%(ns)s, s) LIMIT %(need)s"
_RELEASE = "SELECT pg_advisory_unlock(%(ns)s, s) FROM unnest(%(shares)s::integer[]) AS s"

# The claim's filter: the share an aggregate id falls in (PostgreSQL's text hash, its sign bit cleared).
SHARE_OF = "(hashtext({column}) & 2147483647) % {total}"


class ShareLeases:
    def __init__(self, dsn: str, total: int, name: str) -> None:
        self.dsn = dsn
        self.total = total
        self.name = name
        # Where this relay starts looking for free shares: relays starting together try different ones.
        self.offset = hash(name) % total
        self.held: frozenset[int] = frozenset()
        self.relays = 0
        self._conn: psycopg.AsyncConnection[tuple[int]] | None = None
        self._log = LogThrottle(log)

    async def rebalance(self) -> frozenset[int]:
        """Count the relays present, keep a fair number of shares; on a database failure hold none (the
        locks went with the connection) and try again next time."""
        try:
            conn = await self._connect()
            cur = await conn.execute(_PRESENT, {"ns": PRESENT_LOCK})
            row = await cur.fetchone()
            self.relays = max(int(row[0]) if row else 1, 1)
            fair = math.ceil(self.total / self.relays)
            held = sorted(self.held)
            if len(held) > fair:
                extra = held[fair:]
                await conn.execute(_RELEASE, {"ns": SHARE_LOCKS, "shares": extra})
                self.held = frozenset(held[:fair])
            elif len(held) < fair:
                ring = [(self.offset + i) % self.total for i in range(self.total)]
                candidates = [s for s in ring if s not in self.held]
                cur = await conn.execute(
                    _TAKE, {"ns": SHARE_LOCKS, "candidates": candidates, "need": fair - len(held)}
                )
                self.held = self.held | {int(r[0]) for r in await cur.fetchall()}
            self._log.recovered("shares", "relay %s: holds %d share(s) again", self.name, len(self.held))
        except (psycopg.Error, OSError) as exc:
            self.held = frozenset()
            await self.close()
            self._log.log(
                logging.WARNING,
                "shares",
                "relay %s: share locks lost (%s); claiming nothing meanwhile",
                self.name,
                exc,
            )
        return self.held

    async def _connect(self) -> psycopg.AsyncConnection[tuple[int]]:
        if self._conn is None or self._conn.closed:
            self.held = frozenset()
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, application_name=f"outbox-relay-shares:{self.name}"[:63]
            )
            await self._conn.execute("SELECT pg_advisory_lock_shared(%s, 0)", (PRESENT_LOCK,))
        return self._conn

    async def close(self) -> None:
        """Let go of every share (closing the session releases its locks)."""
        conn, self._conn = self._conn, None
        self.held = frozenset()
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
