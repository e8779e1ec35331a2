"""What the writer, the consumers and the orchestrator share: the schema, the plan, the kill-once marker.

Each approach gets two databases of its own: a *source* (the console's side: `documents` and `changes`,
the ground truth of what was committed, written in the same transaction as the document change) and an
*index* (the indexer's side: `index_docs`, the served state, and `applications`, one row per time a
consumer applied an event, with no unique constraint, so double application is visible).
"""

from __future__ import annotations

import json
import os
import random
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Approach = Literal["baseline", "outbox"]
Fault = Literal[
    "none", "crash_after_commit", "outage_start", "outage_end", "rollback_after_publish", "kill_consumer"
]

SOURCE_DDL = """
CREATE TABLE documents (
    id text PRIMARY KEY,
    enabled boolean NOT NULL DEFAULT false,
    version bigint NOT NULL DEFAULT 0
);
CREATE TABLE changes (
    event_id uuid PRIMARY KEY,
    op integer NOT NULL,
    doc_id text NOT NULL,
    version bigint NOT NULL,
    enabled boolean NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

INDEX_DDL = """
CREATE TABLE index_docs (
    doc_id text PRIMARY KEY,
    enabled boolean NOT NULL,
    version bigint NOT NULL
);
CREATE TABLE applications (
    seq bigserial PRIMARY KEY,
    event_id uuid NOT NULL,
    doc_id text NOT NULL,
    version bigint NOT NULL,
    enabled boolean NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ix_applications_event ON applications (event_id);
"""

APPLY_SQL = (
    "INSERT INTO applications (event_id, doc_id, version, enabled) VALUES (:event_id, :doc_id, :version, :enabled)",
    "INSERT INTO index_docs (doc_id, enabled, version) VALUES (:doc_id, :enabled, :version) "
    "ON CONFLICT (doc_id) DO UPDATE SET enabled = EXCLUDED.enabled, version = EXCLUDED.version",
)


@dataclass(frozen=True, slots=True)
class Op:
    i: int
    doc_id: str
    fault: Fault = "none"


@dataclass(frozen=True, slots=True)
class Config:
    ops: int = 600
    documents: int = 40
    partitions: int = 4
    crash_after_commit: int = 4
    rollback_after_publish: int = 8
    kill_consumer: int = 2
    outages: int = 1
    outage_ops: int = 3
    outage_min_s: float = 3.0
    publish_timeout_s: float = 1.5
    seed: int = 20261124
    quiesce_timeout_s: float = 90.0

    @classmethod
    def small(cls) -> Config:
        return cls(
            ops=150,
            documents=20,
            crash_after_commit=2,
            rollback_after_publish=3,
            kill_consumer=1,
            outage_min_s=2.0,
        )


def make_plan(cfg: Config) -> list[Op]:
    """A seeded plan: which document each op toggles and which fault strikes it. Same for both approaches."""
    rng = random.Random(cfg.seed)
    docs = [f"doc-{n:04d}" for n in range(cfg.documents)]
    faults: dict[int, Fault] = {}
    # Faults land in the middle 80 % of the run, apart from each other, so each is visible on its own.
    pool = list(range(cfg.ops // 10, cfg.ops - cfg.ops // 10))
    rng.shuffle(pool)

    def take(kind: Fault, n: int, span: int = 1) -> None:
        placed = 0
        for start in list(pool):
            if placed == n:
                return
            cells = range(start - 2, start + span + 2)
            if any(c in faults for c in cells):
                continue
            if span == 1:
                faults[start] = kind
            else:
                faults[start] = "outage_start"
                faults[start + span] = "outage_end"
            placed += 1

    # Consumer kills evenly spread, so no two flagged events share a consumer batch (each kill counts).
    for k in range(1, cfg.kill_consumer + 1):
        at = k * cfg.ops // (cfg.kill_consumer + 1)
        while at in faults or at - 1 in faults or at + 1 in faults:
            at += 3
        faults[at] = "kill_consumer"
    take("outage_start", cfg.outages, span=cfg.outage_ops)
    take("crash_after_commit", cfg.crash_after_commit)
    take("rollback_after_publish", cfg.rollback_after_publish)
    return [Op(i, rng.choice(docs), faults.get(i, "none")) for i in range(cfg.ops)]


def save_plan(plan: list[Op], path: Path) -> None:
    path.write_text(json.dumps([asdict(op) for op in plan]))


def load_plan(path: Path) -> list[Op]:
    return [Op(**raw) for raw in json.loads(path.read_text())]


def kill_self_once(state_dir: Path, marker: str) -> None:
    """SIGKILL this process, unless it already did so for `marker` (a redelivery must not kill again)."""
    flag = state_dir / f"killed-{marker}"
    if flag.exists():
        return
    flag.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)
