"""The consistency benchmark: the seed's dual write next to the transactional outbox, same load, same crashes.

For each approach, in databases of its own and on a topic of its own, through one broker behind a TCP proxy:
a writer process toggles documents following a seeded plan; a consumer process applies the events to an
index. The plan strikes both approaches at the same points:
  - the writer is SIGKILLed between the commit and the publish;
  - the broker link is cut right after a commit, for a few ops and at least a few seconds (publish fails);
  - the publish happens inside a transaction that then rolls back;
  - the consumer is SIGKILLed after applying an event, before committing its offset (redelivery).
The outbox side runs the library's relay (`outbox relay`, a real process) and `IdempotentConsumer`.
After quiescence it counts, per approach, from the databases (never from the processes' own claims):
committed, delivered, lost, duplicated (applied more than once), phantom (applied, never committed),
documents whose index disagrees with the source, and throughput.

    python -m bench.consistency.run [--small] [--out bench/results/consistency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from sqlalchemy import create_engine

from bench.consistency.common import INDEX_DDL, SOURCE_DDL, Approach, Config, Op, make_plan, save_plan
from outbox import metadata as outbox_metadata
from tests.e2e.infra import Infra
from testsupport.broker import BrokerBehindProxy

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "bench" / "results" / "consistency.json"


def log(msg: str) -> None:
    print(f"[consistency] {msg}", file=sys.stderr, flush=True)


def local_infra() -> Infra:
    """PostgreSQL from PG* variables (the local stack); the bench starts its own broker."""
    return Infra(
        backend="local",
        pg_host=os.environ.get("PGHOST", "127.0.0.1"),
        pg_port=int(os.environ.get("PGPORT", "5432")),
        pg_user=os.environ.get("PGUSER", "postgres"),
        pg_password=os.environ.get("PGPASSWORD") or None,
        redis_url="",
        kafka_bootstrap="",
    )


@dataclass
class Result:
    approach: str
    committed: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    extra_applications: int = 0
    phantom: int = 0
    topic_records: int = 0
    divergent_documents: int = 0
    rolled_back: int = 0
    publish_failed: int = 0
    writer_kills: int = 0
    consumer_kills: int = 0
    outage_s: float = 0.0
    write_s: float = 0.0
    converge_s: float = 0.0
    writes_per_s: float = 0.0
    quiesced: bool = False
    notes: list[str] = field(default_factory=list)


def _open_log(path: Path) -> BinaryIO:
    return open(path, "ab")


def _keep_logs(work: Path, keep: Path) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*.log"):
        (keep / f.name).write_bytes(f.read_bytes())


def _write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


class Supervised:
    """A child process restarted whenever it dies (SIGKILLed by its own fault hook) until `stop()`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.deaths = 0
        self.killed = 0  # deaths by SIGKILL (the fault hook), as opposed to failures
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        with _open_log(self.log_path) as logf:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def _supervise(self) -> None:
        while not self._stopping:
            await self._spawn()
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            self.deaths += 1
            self.killed += code == -9
            log(f"{self.name} exited ({code}); restarting")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float = 20.0) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)


class TopicWatcher:
    """Reads the topic from the beginning, incrementally: which offsets exist per partition."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
            request_timeout_ms=5000,
        )
        self.ends: dict[int, int] = {}
        self.records = 0

    async def start(self) -> None:
        await self.consumer.start()

    async def poll(self) -> int:
        got = 0
        try:
            batches = await self.consumer.getmany(timeout_ms=200)
        except KafkaError:
            return 0
        for tp, records in batches.items():
            if records:
                self.ends[tp.partition] = max(self.ends.get(tp.partition, 0), records[-1].offset + 1)
                got += len(records)
        self.records += got
        return got

    async def stop(self) -> None:
        await self.consumer.stop()


def _db_names(approach: Approach, run_id: str) -> tuple[str, str]:
    """Per-run names: two runs on one PostgreSQL (a developer and CI, say) never share or drop each other's."""
    return f"consistency_{run_id}_{approach}_source", f"consistency_{run_id}_{approach}_index"


def _schema(infra: Infra, approach: Approach, cfg: Config, run_id: str) -> tuple[str, str]:
    source_db, index_db = _db_names(approach, run_id)
    source_url = infra.create_database(source_db)
    index_url = infra.create_database(index_db)
    with psycopg.connect(infra.pg_dsn(source_db), autocommit=True) as conn:
        conn.execute(SOURCE_DDL)
        conn.execute(
            "INSERT INTO documents (id) SELECT 'doc-' || lpad(n::text, 4, '0') FROM generate_series(0, %s) n",
            (cfg.documents - 1,),
        )
    with psycopg.connect(infra.pg_dsn(index_db), autocommit=True) as conn:
        conn.execute(INDEX_DDL)
    if approach == "outbox":
        for url in (source_url, index_url):
            engine = create_engine(url)
            with engine.begin() as sa_conn:
                outbox_metadata.create_all(sa_conn)
            engine.dispose()
    return source_url, index_url


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _committed(bootstrap: str, group: str, partitions: list[int], topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in partitions]
        )
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta is not None}
    except KafkaError:
        return {}
    finally:
        await admin.close()


async def run_approach(
    approach: Approach, cfg: Config, plan: list[Op], infra: Infra, broker: BrokerBehindProxy, work: Path
) -> Result:
    run_id = uuid.uuid4().hex[:8]
    res = Result(approach)
    topic, group = f"bench.{approach}.{run_id}.document", f"bench-{approach}-indexer-{run_id}"
    source_url, index_url = _schema(infra, approach, cfg, run_id)
    await _create_topic(broker.bootstrap, topic, cfg.partitions)
    plan_path = work / "plan.json"
    save_plan(plan, plan_path)
    state_dir = work / f"state-{approach}"
    state_dir.mkdir()
    # The topic is already unique to this run: no namespace prefix, so the watcher reads what the relay writes.
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP": broker.bootstrap,
        "OUTBOX_TOPIC_PREFIX": "",
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    py = sys.executable

    consumer = Supervised(
        f"{approach}-consumer",
        [py, "-m", "bench.consistency.consumer", "--approach", approach, "--index-url", index_url,
         "--bootstrap", broker.bootstrap, "--topic", topic, "--group", group, "--state-dir", str(state_dir)],
        env,
        work,
    )  # fmt: skip
    relay: Supervised | None = None
    if approach == "outbox":
        relay_env = {
            **env,
            "OUTBOX_RELAY_IDLE_POLL_MAX_S": "0.05",
            "OUTBOX_TOPIC_PARTITIONS": str(cfg.partitions),
        }
        relay = Supervised(
            "outbox-relay",
            [py, "-m", "outbox.ops.cli", "relay", "--database-url", source_url, "--name", f"bench-{run_id}"],
            relay_env,
            work,
        )
    await consumer.start()
    if relay is not None:
        await relay.start()

    # -- the write phase ------------------------------------------------------------------------------------
    restore_tasks: list[asyncio.Task[None]] = []
    cut_at: float | None = None

    async def restore_later(since: float) -> None:
        remaining = since + cfg.outage_min_s - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)  # the outage lasts at least outage_min_s: a duration, not a wait
        broker.proxy.restore()
        res.outage_s += time.monotonic() - since
        log(f"{approach}: broker link restored after {time.monotonic() - since:.1f}s")

    started = time.monotonic()
    start = 0
    res.write_s = 0.0
    while start < len(plan):
        proc = await asyncio.create_subprocess_exec(
            py, "-m", "bench.consistency.writer", "--approach", approach, "--source-url", source_url,
            "--bootstrap", broker.bootstrap, "--topic", topic, "--plan", str(plan_path),
            "--start", str(start), "--publish-timeout", str(cfg.publish_timeout_s),
            env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=_open_log(work / f"{approach}-writer.log"),
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        crashed_at: int | None = None
        ready_at: float | None = None
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if line == "READY":
                ready_at = time.monotonic()
            elif line == "CTL CUT":
                broker.proxy.cut("refuse")
                cut_at = time.monotonic()
                log(f"{approach}: broker link cut")
            elif line == "CTL RESTORE":
                assert cut_at is not None
                restore_tasks.append(asyncio.create_task(restore_later(cut_at)))
            elif line.startswith("CRASH "):
                crashed_at = int(line.split()[1])
            elif line.startswith("PUBLISH_FAILED"):
                res.publish_failed += 1
            elif line.startswith("ROLLBACK "):
                res.rolled_back += 1
            if line.startswith("CTL "):
                proc.stdin.write(b"OK\n")
                await proc.stdin.drain()
        code = await proc.wait()
        if ready_at is not None:  # time spent writing, without interpreter start-up
            res.write_s += time.monotonic() - ready_at
        if crashed_at is not None:
            if code != -9:
                raise RuntimeError(
                    f"{approach} writer was to die by SIGKILL at op {crashed_at}, exited {code}"
                )
            res.writer_kills += 1
            start = crashed_at + 1
            continue
        if code != 0:
            raise RuntimeError(f"{approach} writer failed ({code}); see {work}/{approach}-writer.log")
        break
    for task in restore_tasks:
        await task
    if broker.proxy.is_cut:
        broker.proxy.restore()

    # -- quiescence: every record on the topic consumed and its offset committed, outbox drained ------------
    watcher = TopicWatcher(broker.bootstrap, topic)
    await watcher.start()
    src_dsn = infra.pg_dsn(_db_names(approach, run_id)[0])
    deadline = time.monotonic() + cfg.quiesce_timeout_s
    stable = 0
    last: tuple[Any, ...] = ()
    try:
        while time.monotonic() < deadline:
            got = await watcher.poll()
            pending = 0
            if approach == "outbox":
                with psycopg.connect(src_dsn) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL"
                    ).fetchone()
                    pending = int(row[0]) if row else 0
            committed = await _committed(broker.bootstrap, group, sorted(watcher.ends), topic)
            caught_up = all(committed.get(p, 0) >= end for p, end in watcher.ends.items())
            snapshot = (watcher.records, tuple(sorted(committed.items())), pending)
            ok = got == 0 and pending == 0 and caught_up and consumer.alive and watcher.records > 0
            stable = stable + 1 if ok and snapshot == last else 0
            last = snapshot
            if stable >= 3:
                res.quiesced = True
                break
    finally:
        await watcher.stop()
    res.topic_records = watcher.records
    res.converge_s = time.monotonic() - started
    if not res.quiesced:
        res.notes.append(f"did not quiesce within {cfg.quiesce_timeout_s}s")
    await consumer.stop()
    if relay is not None:
        await relay.stop()
        if relay.deaths:
            res.notes.append(f"relay restarts: {relay.deaths}")
    res.consumer_kills = consumer.killed
    if consumer.deaths > consumer.killed:
        res.notes.append(f"consumer restarts after failures: {consumer.deaths - consumer.killed}")
    _count(res, infra, approach, run_id)
    if os.environ.get("CONSISTENCY_KEEP_DB"):
        res.notes.append("databases kept: " + ", ".join(_db_names(approach, run_id)))
    else:
        for name in _db_names(approach, run_id):
            infra.drop_database(name)
    res.writes_per_s = round(res.committed / res.write_s, 1) if res.write_s else 0.0
    res.outage_s = round(res.outage_s, 2)
    res.write_s = round(res.write_s, 2)
    res.converge_s = round(res.converge_s, 2)
    return res


def _count(res: Result, infra: Infra, approach: Approach, run_id: str) -> None:
    """The figures, from the databases: the source's committed changes against the index's applications."""
    source_db, index_db = _db_names(approach, run_id)
    with psycopg.connect(infra.pg_dsn(source_db)) as conn:
        committed = {r[0] for r in conn.execute("SELECT event_id FROM changes")}
        source_docs = {
            r[0]: (r[1], r[2])
            for r in conn.execute("SELECT id, enabled, version FROM documents WHERE version > 0")
        }
    with psycopg.connect(infra.pg_dsn(index_db)) as conn:
        applications = Counter(r[0] for r in conn.execute("SELECT event_id FROM applications"))
        index_docs = {
            r[0]: (r[1], r[2]) for r in conn.execute("SELECT doc_id, enabled, version FROM index_docs")
        }
        received = set(applications)
        if approach == "outbox":  # deliberately skipped as stale by the version guard: received, not lost
            received |= {r[0] for r in conn.execute("SELECT event_id FROM inbox WHERE outcome <> 'applied'")}
    res.committed = len(committed)
    res.delivered = len(committed & received)
    res.lost = len(committed - received)
    res.phantom = len(set(applications) - committed)
    res.duplicated = sum(1 for n in applications.values() if n > 1)
    res.extra_applications = sum(n - 1 for n in applications.values() if n > 1)
    res.divergent_documents = sum(1 for d, state in source_docs.items() if index_docs.get(d) != state)


COLUMNS = [
    ("approach", "approach"),
    ("committed", "committed"),
    ("delivered", "delivered"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("phantom", "phantom"),
    ("divergent_documents", "divergent docs"),
    ("topic_records", "records on topic"),
    ("writes_per_s", "writes/s"),
    ("converge_s", "converged s"),
    ("writer_kills", "writer kills"),
    ("consumer_kills", "consumer kills"),
    ("outage_s", "outage s"),
    ("rolled_back", "rolled back"),
    ("publish_failed", "publish failed"),
]


def table(results: list[Result]) -> str:
    rows = [[h for _, h in COLUMNS]] + [[str(getattr(r, k)) for k, _ in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def run_bench(
    cfg: Config, infra: Infra | None = None, out: Path | None = DEFAULT_OUT
) -> dict[str, Any]:
    infra = infra or local_infra()
    plan = make_plan(cfg)
    faults = Counter(op.fault for op in plan if op.fault != "none")
    log(f"plan: {cfg.ops} ops on {cfg.documents} documents; faults {dict(faults)}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="consistency-") as tmp, BrokerBehindProxy() as broker:
        work = Path(tmp)
        log(f"broker (tansu, memory) behind proxy {broker.bootstrap}; logs in {work}")
        approaches: tuple[Approach, ...] = ("baseline", "outbox")
        for approach in approaches:
            t0 = time.monotonic()
            results.append(await run_approach(approach, cfg, plan, infra, broker, work))
            log(f"{approach} done in {time.monotonic() - t0:.1f}s")
        if os.environ.get("CONSISTENCY_KEEP_LOGS"):
            _keep_logs(work, Path(os.environ["CONSISTENCY_KEEP_LOGS"]))
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "faults_per_approach": {
            "writer_sigkill_between_commit_and_publish": faults["crash_after_commit"],
            "broker_cut_after_commit": faults["outage_start"],
            "publish_then_rollback": faults["rollback_after_publish"],
            "consumer_sigkill_after_apply_before_offset_commit": faults["kill_consumer"],
        },
        "environment": {
            "broker": "Tansu 0.6 (memory storage) behind an asyncio TCP proxy, 127.0.0.1",
            "postgresql": f"{infra.pg_host}:{infra.pg_port}",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "results": {r.approach: asdict(r) for r in results},
    }
    print(table(results), flush=True)
    if out is not None:
        _write_report(out, report)
        log(f"wrote {out}")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="a short run (the test's size)")
    p.add_argument("--ops", type=int)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    cfg = Config.small() if args.small else Config()
    if args.ops:
        cfg = Config(**{**asdict(cfg), "ops": args.ops})
    asyncio.run(run_bench(cfg, out=args.out))


if __name__ == "__main__":
    main()
