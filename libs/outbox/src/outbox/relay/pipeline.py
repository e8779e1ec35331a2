"""The publish loop both relay modes drive: one batch at a time (`claim_ahead=False`), or claim-ahead.

Claim-ahead: under a backlog the relay claims the next batch while the current one is on its way to the
broker, and sends the next one while the current one is being marked and committed.

One batch at a time leaves both cores half idle: PostgreSQL claims and marks while the relay waits, then
the relay builds and sends records while PostgreSQL waits. Here each batch still has its own transaction;
what changes is that up to three are open at once (one being claimed, one being sent, one committing).

At most one batch commits behind the one being sent, and one is claimed ahead of it.

Order per aggregate holds because of three rules:
  1. A batch is claimed with this relay's uncommitted batches `in_flight`: their rows are locked (skipped)
     but are not gaps, so a row whose predecessor is in flight here may be claimed.
  2. Before a batch is sent, every aggregate that an earlier in-flight batch did not get acknowledged in
     full is `held`: none of its rows in this batch goes out (they stay pending, and go in a later claim).
     Batches are sent one after the other, so those outcomes are known by then.
  3. Batches commit in claim order: a batch whose predecessor failed to commit rolls back too.
So the broker always holds an aggregate's rows in order, and a crash at any point leaves only rows that
were either published (and maybe marked) or still pending: at least once, as with one batch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from outbox.relay.batch import Aggregate, Settlement, in_aggregate_order
from outbox.relay.failures import outages_classified
from outbox.relay.publisher import BatchPublisher
from outbox.relay.steps import BatchSteps
from outbox.relay.store import ClaimedRow


@dataclass(eq=False)
class _Batch:
    conn: AsyncConnection  # its transaction is open until `finished`
    rows: list[ClaimedRow]
    after: list[_Batch]  # this relay's uncommitted batches when this one was claimed (rule 1)
    held: set[Aggregate] = field(default_factory=set)  # known once sent (rule 2)
    moved: bool = False  # its claim moved held rows behind the later-ready row they wait for
    finished: asyncio.Task[None] | None = None  # marks and commit (rule 3)


class PublishPipeline:
    """Publishes batches until a claim comes back short of a full batch, claiming ahead when allowed;
    with `claim_ahead` off, one batch (claim, send, mark, commit) and return."""

    def __init__(
        self,
        steps: BatchSteps,
        publisher: BatchPublisher,
        *,
        beat: Callable[[], None],
        refresh: Callable[[], Awaitable[None]],
        claim_ahead: bool,
    ) -> None:
        self.steps = steps
        self.publisher = publisher  # readied before the first claim: a producer start never runs in one
        self.beat = beat
        self.refresh = refresh  # the planner's figures, kept current through a long drain
        self.claim_ahead = claim_ahead
        self.in_flight: list[_Batch] = []
        self.ahead: asyncio.Task[_Batch | None] | None = None

    async def run(self) -> int:
        """Returns the size of the last claim (less than a batch: the backlog is gone, or 0), or how many
        of its rows could go when most had to wait (less than a batch too: the caller backs off)."""
        try:
            async with outages_classified():
                return await self._run()
        finally:
            await self._abandon()

    async def _run(self) -> int:
        steps = self.steps
        batch = await self._claim([])
        while batch is not None:
            self.in_flight.append(batch)
            held: set[Aggregate] = set()
            for earlier in batch.after:
                held |= earlier.held
            # A claim mostly of rows that must wait (their predecessors are locked by another relay) means
            # the relays are in each other's way: claiming ahead would lock yet more rows the other one
            # needs. Send what may go, commit, and let the caller back off (measured: two claim-ahead
            # relays on one backlog of 1,000 aggregates drained ~10 rows/s without this).
            publishable = in_aggregate_order(batch.rows, held)
            contended = 2 * len(publishable) < len(batch.rows)
            # Rows of a topic not created yet wait for the claim after this run (`Relay.send`): claiming
            # ahead would only lock more of them meanwhile.
            full = (
                self.claim_ahead
                and len(batch.rows) >= steps.settings.batch_size
                and not contended
                and not steps.new_topics(publishable)
            )
            if full and not steps.stopping:
                await self.refresh()
                self.ahead = asyncio.create_task(self._claim(list(self.in_flight)), name="outbox-claim-ahead")
            settlement = await steps.send(publishable, self.publisher)
            batch.held = settlement.held(batch.rows)
            previous = batch.after[-1].finished if batch.after else None
            batch.finished = asyncio.create_task(self._finish(batch, settlement, previous))
            if settlement.outage is not None or self.ahead is None:
                await batch.finished
                await steps.after_outage(settlement.outage)
                # Rows just moved out of the way: claim again at once, the next claim passes them.
                return len(publishable) if contended and not batch.moved else len(batch.rows)
            if previous is not None:
                await previous  # at most one batch commits behind the one being sent; a failure stops here
            self.beat()
            ahead, self.ahead = self.ahead, None
            batch = await ahead
            steps.stats.claimed_ahead += batch is not None
        return 0

    async def _claim(self, after: list[_Batch]) -> _Batch | None:
        conn = await self.steps.engine.connect()
        moved = self.steps.stats.moved_behind  # one claim at a time: the difference is this claim's
        try:
            await conn.begin()
            rows = await self.steps.claim(conn, [row.id for earlier in after for row in earlier.rows])
        except BaseException:
            await _close(conn)
            raise
        if not rows:
            await _close(conn)
            return None
        return _Batch(conn, rows, after, moved=self.steps.stats.moved_behind > moved)

    async def _finish(
        self, batch: _Batch, settlement: Settlement, previous: asyncio.Task[None] | None
    ) -> None:
        try:
            await self.steps.apply(batch.conn, settlement)
            if previous is not None:
                await previous  # commits in claim order; its failure is ours too (rule 3)
            await batch.conn.commit()
        finally:
            await _close(batch.conn)
            self.in_flight.remove(batch)

    async def _abandon(self) -> None:
        """Whatever is still open after a failure or a stop: claimed rows are released (rolled back), the
        commits under way are waited for. The failure itself has already propagated."""
        if self.ahead is not None:
            self.ahead.cancel()
            with contextlib.suppress(BaseException):
                claimed = await self.ahead
                if claimed is not None:
                    await _close(claimed.conn)
            self.ahead = None
        for batch in list(self.in_flight):
            if batch.finished is None:
                await _close(batch.conn)
                self.in_flight.remove(batch)
            else:
                with contextlib.suppress(BaseException):
                    await batch.finished


async def _close(conn: AsyncConnection) -> None:
    """Back to the pool; an open transaction is rolled back."""
    with contextlib.suppress(Exception):
        await conn.close()
