"""Does the search index agree with console? `make reconcile` and `make rebuild-index`.

    python scripts/projection.py reconcile [--repair] [--settle S] [--wait S]
    python scripts/projection.py rebuild [--chunk N] [--pause S] [--restart] [--wait S]

This script only drives the services' own code and prints: console.reconcile compares console's documents
with what the index holds (indexer.documents.service.held), each read in a read-only transaction of its own
database, and repairs or rebuilds the index the normal way, by console re-announcing documents through its
outbox (console.snapshots) for the indexer's consumer to apply. The drift kinds, the second look `--settle`
seconds later and the resumable rebuild are described there.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import Iterable, Sequence

from console import reconcile
from console.reconcile import Drift
from console.settings import Settings as ConsoleSettings
from indexer.documents.service import held
from indexer.settings import Settings as IndexerSettings
from outbox import OutboxWriter
from servicekit.db import Database


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


async def rebuild(db: Database, read_index: reconcile.ReadIndex, args: argparse.Namespace) -> list[Drift]:
    progress = await reconcile.start_rebuild(db, restart=args.restart)
    if progress.announced:
        print(f"resuming {reconcile.RUN_NAME}: {progress.announced} documents already announced", flush=True)
    view = ProgressView(progress.total, progress.announced)
    try:
        while True:
            progress = await reconcile.rebuild_next(db, args.chunk)
            view.update(progress.announced, progress.total)
            if progress.finished:
                break
            if args.pause:
                await asyncio.sleep(args.pause)
    finally:
        view.close()
    if orphans := await reconcile.announce_orphans(db, read_index):
        print(f"announced the deletion of {orphans} orphans")
    print("waiting for the indexer to apply the snapshots...", flush=True)
    drift = await reconcile.wait_converged(
        db,
        read_index,
        settle_s=args.settle,
        wait_s=args.wait,
        report=lambda n: print(f"  {n} still differ", flush=True),
    )
    if not drift:
        await reconcile.finish_rebuild(db)
    return drift


async def main_async(args: argparse.Namespace) -> int:
    db = Database(args.console_url, OutboxWriter(source="console"), pool_size=2)
    index = Database(args.indexer_url, OutboxWriter(source="indexer"), pool_size=2)  # only read
    read_index: reconcile.ReadIndex = functools.partial(held, index)
    try:
        if args.command == "rebuild":
            drift = await rebuild(db, read_index, args)
            print_drift(drift)
            return 1 if drift else 0
        drift = await reconcile.confirmed_drift(db, read_index, args.settle)
        print_drift(drift)
        if not drift or not args.repair:
            return 1 if drift else 0
        repaired = await reconcile.repair(db, read_index, drift)
        print(f"repair: console re-announced {repaired} documents; waiting for the index")
        remaining = await reconcile.wait_converged(db, read_index, settle_s=args.settle, wait_s=args.wait)
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
