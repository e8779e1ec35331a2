"""Does the search index agree with console? `make reconcile` and `make rebuild-index`.

    python scripts/projection.py reconcile [--repair] [--settle S] [--wait S]
    python scripts/projection.py rebuild [--chunk N] [--pause S] [--restart] [--wait S]

Console's documents (id, version, enabled, archived; a deleted document is absent) are compared with the
indexer's `indexed_documents` through read-only transactions on each database. Drift kinds: `missing`
(console has it, the index does not), `stale version` (the index holds an older version), `wrong
searchability` (same version, searchable differs), `orphaned` (the index serves a document console no
longer has). Drift must survive a second look `--settle` seconds later with console unchanged, so a change
still in flight through relay and consumer is not reported.

Repairs go through the normal path only: console re-announces documents through its own outbox
(console/snapshots.py: `console.document.snapshot`, same version, applied by the indexer when its version is
not newer) and the indexer's consumer applies them; neither service's database is written by the other.

`rebuild` re-snapshots every document in id order, a chunk per console transaction with the cursor row
(`snapshot_runs`) advanced in the same transaction, so a rerun after a crash resumes where it stopped;
then announces the orphans and waits until no drift remains. Snapshots carry new event ids (the indexer's
inbox never calls them duplicates) and console's current version, never lower than any version the
indexer's guard rows (`consumer_versions`) hold, whatever backup the indexer came back from.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from console import snapshots
from console.settings import Settings as ConsoleSettings
from indexer.settings import Settings as IndexerSettings
from outbox import OutboxWriter
from servicekit.db import Database

RUN_NAME = "rebuild-index"


@dataclass(frozen=True, slots=True)
class ConsoleDoc:
    version: int
    searchable: bool


@dataclass(frozen=True, slots=True)
class IndexDoc:
    version: int
    searchable: bool
    deleted: bool
    identity: snapshots.Absent


@dataclass(frozen=True, slots=True)
class Drift:
    document_id: uuid.UUID
    kind: str
    console: str
    index: str
    console_version: int | None


async def read_console(
    engine: AsyncEngine, ids: Sequence[uuid.UUID] | None = None
) -> dict[uuid.UUID, ConsoleDoc]:
    sql = "SELECT id, version, enabled AND NOT archived FROM documents"
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION READ ONLY"))
        rows = await conn.execute(
            text(sql + (" WHERE id = ANY(:ids)" if ids is not None else "")), {"ids": ids}
        )
        return {r[0]: ConsoleDoc(r[1], r[2]) for r in rows}


async def read_index(
    engine: AsyncEngine, ids: Sequence[uuid.UUID] | None = None
) -> dict[uuid.UUID, IndexDoc]:
    sql = (
        "SELECT id, version, enabled AND NOT archived AND NOT deleted, deleted, dataset_id, workspace_id, "
        "owner_account_id, name FROM indexed_documents"
    )
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION READ ONLY"))
        rows = await conn.execute(
            text(sql + (" WHERE id = ANY(:ids)" if ids is not None else "")), {"ids": ids}
        )
        return {
            r[0]: IndexDoc(r[1], r[2], r[3], snapshots.Absent(r[0], r[1], r[4], r[5], r[6], r[7]))
            for r in rows
        }


def compare(console: dict[uuid.UUID, ConsoleDoc], index: dict[uuid.UUID, IndexDoc]) -> list[Drift]:
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


async def confirmed_drift(console: AsyncEngine, index: AsyncEngine, settle_s: float) -> list[Drift]:
    """Drift seen twice, `settle_s` apart, with console's version unchanged between the looks."""
    first = compare(await read_console(console), await read_index(index))
    if not first or settle_s <= 0:
        return first
    await asyncio.sleep(settle_s)
    ids = [d.document_id for d in first]
    again = {
        d.document_id: d for d in compare(await read_console(console, ids), await read_index(index, ids))
    }
    return [
        again[d.document_id]
        for d in first
        if d.document_id in again and again[d.document_id].console_version == d.console_version
    ]


def print_drift(drift: Sequence[Drift]) -> None:
    if not drift:
        print("no drift: the index agrees with console")
        return
    print(f"{'document':36}  {'drift':19}  {'console':18}  index")
    for d in drift:
        print(f"{d.document_id!s:36}  {d.kind:19}  {d.console:18}  {d.index}")
    counts: dict[str, int] = {}
    for d in drift:
        counts[d.kind] = counts.get(d.kind, 0) + 1
    print(f"{len(drift)} drifted: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))


async def repair(db: Database, index: AsyncEngine, drift: Sequence[Drift]) -> int:
    """Console re-announces each drifted document (orphans: their deletion) through its outbox."""
    orphans = [d.document_id for d in drift if d.kind == "orphaned"]
    present = [d.document_id for d in drift if d.kind != "orphaned"]
    absent = [i.identity for i in (await read_index(index, orphans)).values()] if orphans else []
    async with db.unit_of_work() as uow:
        count = await snapshots.announce(uow, present)
        return count + await snapshots.announce_absent(uow, absent)


async def wait_converged(
    console: AsyncEngine,
    index: AsyncEngine,
    *,
    settle_s: float,
    wait_s: float,
    report: Callable[[int], None] | None = None,
) -> list[Drift]:
    deadline = time.monotonic() + wait_s
    while True:
        drift = await confirmed_drift(console, index, settle_s)
        if report is not None:
            report(len(drift))
        if not drift or time.monotonic() > deadline:
            return drift
        await asyncio.sleep(0.5)


class ProgressView:
    """A rich progress bar (rate, ETA) on a terminal; plain lines at most once a second otherwise."""

    def __init__(self, total: int, done: int) -> None:
        self.tty = sys.stdout.isatty()
        self.started, self.start_done, self.last_line, self.last_done = time.monotonic(), done, 0.0, -1
        self.total = total
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]} docs/s"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("re-snapshot", total=total, completed=done, rate="-")
            self.bar.start()

    def update(self, done: int, total: int) -> None:
        self.total = max(total, done)
        elapsed = time.monotonic() - self.started
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        if self.tty:
            self.bar.update(self.task, completed=done, total=self.total, rate=f"{rate:.0f}")
            return
        final = done >= self.total and done != self.last_done
        if time.monotonic() - self.last_line >= 1.0 or final:
            self.last_line, self.last_done = time.monotonic(), done
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            print(
                f"re-snapshot {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%) "
                f"{rate:.0f} docs/s ETA {eta:.1f}s",
                flush=True,
            )

    def close(self) -> None:
        if self.tty:
            self.bar.stop()


async def rebuild(db: Database, index: AsyncEngine, args: argparse.Namespace) -> list[Drift]:
    async with db.sessions() as session, session.begin():
        progress = await snapshots.start_run(session, RUN_NAME, restart=args.restart)
    if progress.announced:
        print(f"resuming {RUN_NAME}: {progress.announced} documents already announced", flush=True)
    view = ProgressView(progress.total, progress.announced)
    try:
        while True:
            async with db.unit_of_work() as uow:
                progress = await snapshots.snapshot_next(uow, RUN_NAME, args.chunk)
            view.update(progress.announced, progress.total)
            if progress.finished:
                break
            if args.pause:
                await asyncio.sleep(args.pause)
    finally:
        view.close()
    console_ids = set(await read_console(db.engine))
    orphans = [
        i.identity
        for doc_id, i in (await read_index(index)).items()
        if doc_id not in console_ids and not i.deleted
    ]
    if orphans:
        async with db.unit_of_work() as uow:
            print(f"announced the deletion of {await snapshots.announce_absent(uow, orphans)} orphans")
    print("waiting for the indexer to apply the snapshots...", flush=True)
    drift = await wait_converged(
        db.engine,
        index,
        settle_s=args.settle,
        wait_s=args.wait,
        report=lambda n: print(f"  {n} still differ", flush=True),
    )
    if not drift:
        async with db.sessions() as session, session.begin():
            await snapshots.finish_run(session, RUN_NAME)
    return drift


async def main_async(args: argparse.Namespace) -> int:
    db = Database(args.console_url, OutboxWriter(source="console"), pool_size=2)
    index = create_async_engine(args.indexer_url, pool_size=2)
    try:
        if args.command == "rebuild":
            drift = await rebuild(db, index, args)
            print_drift(drift)
            return 1 if drift else 0
        drift = await confirmed_drift(db.engine, index, args.settle)
        print_drift(drift)
        if not drift or not args.repair:
            return 1 if drift else 0
        print(
            f"repair: console re-announced {await repair(db, index, drift)} documents; waiting for the index"
        )
        remaining = await wait_converged(db.engine, index, settle_s=args.settle, wait_s=args.wait)
        print_drift(remaining)
        return 1 if remaining else 0
    finally:
        await db.dispose()
        await index.dispose()


def parse(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["reconcile", "rebuild"])
    parser.add_argument("--console-url", default=ConsoleSettings().database_url)
    parser.add_argument("--indexer-url", default=IndexerSettings().database_url)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between the two looks at a drift")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the index to converge")
    parser.add_argument("--repair", action="store_true", help="reconcile: re-announce drifted documents")
    parser.add_argument("--chunk", type=int, default=500, help="rebuild: documents per console transaction")
    parser.add_argument("--pause", type=float, default=0.0, help="rebuild: seconds between chunks (throttle)")
    parser.add_argument("--restart", action="store_true", help="rebuild: ignore the cursor, start over")
    return parser.parse_args(list(argv) if argv is not None else None)


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse())))
