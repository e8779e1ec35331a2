"""After the storm: wait for quiescence, then compare console, the indexer and the two inboxes.

Counted from the databases (the ground truth), and from what the indexer serves over HTTP:
- lost: a committed event missing from its consumer's inbox (either direction), a dead-lettered outbox
  row, or a document whose indexed state differs from console's final state;
- duplicated: an inbox holding an event twice, or the indexer reporting one (document, version, type)
  twice, which is what applying one change twice would produce;
- phantom: anything a consumer processed that no committed transaction wrote, an injected rolled-back
  event id in an inbox, or a rolled-back marker/version visible in the index or its search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.chaos_load import PHANTOM_BUMP, Corpus, LoadStats
from tests.e2e.system import System
from testsupport import wait_until

# By event type: the topic column may hold a prefixed wire name (OUTBOX_TOPIC_PREFIX).
CHANGES = "event_type LIKE 'console.document.%%'"
REPORTS = "event_type LIKE 'indexer.document.%%'"
PENDING = "SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL"


@dataclass
class Figures:
    committed: int = 0  # console.document events committed (= document changes)
    reports: int = 0  # indexer.document events committed
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0
    quiesced: bool = False
    quiescence_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def _ids(system: System, service: str, sql: str, *params: Any) -> list[str]:
    return [str(r[0]) for r in system.rows(service, sql, *params)]


def backlog(system: System) -> dict[str, int]:
    indexer_group = system.groups["indexer-consumer"]
    console_group = system.groups["console-consumer"]
    return {
        "console_pending": system.scalar("console", PENDING),
        "indexer_pending": system.scalar("indexer", PENDING),
        "to_index": system.scalar("console", f"SELECT count(*) FROM outbox WHERE {CHANGES}")
        - system.scalar("indexer", "SELECT count(*) FROM inbox WHERE consumer = %s", indexer_group),
        "to_report": system.scalar("indexer", f"SELECT count(*) FROM outbox WHERE {REPORTS}")
        - system.scalar(
            "console",
            f"SELECT count(*) FROM inbox WHERE consumer = %s AND {REPORTS}",
            console_group,
        ),
    }


async def wait_for_quiescence(system: System, timeout: float) -> tuple[bool, float, dict[str, int]]:
    """Both outboxes drained and both consumers caught up, twice in a row."""
    started = time.monotonic()
    seen: list[dict[str, int]] = []

    async def quiet() -> bool:
        seen.append(backlog(system))
        return len(seen) > 1 and not any(seen[-1].values()) and not any(seen[-2].values())

    try:
        await wait_until(quiet, timeout=timeout, interval=0.5, what="quiescence")
        return True, time.monotonic() - started, seen[-1]
    except AssertionError:
        return False, time.monotonic() - started, seen[-1] if seen else {}


async def audit(system: System, corpora: list[Corpus], load: LoadStats, *, timeout: float) -> Figures:
    f = Figures()
    f.quiesced, f.quiescence_s, f.details["backlog"] = await wait_for_quiescence(system, timeout)
    indexer_group = system.groups["indexer-consumer"]
    console_group = system.groups["console-consumer"]

    changes = set(_ids(system, "console", f"SELECT event_id FROM outbox WHERE {CHANGES}"))
    reports = set(_ids(system, "indexer", f"SELECT event_id FROM outbox WHERE {REPORTS}"))
    f.committed, f.reports = len(changes), len(reports)
    indexed_in = _ids(system, "indexer", "SELECT event_id FROM inbox WHERE consumer = %s", indexer_group)
    reported_in = _ids(
        system,
        "console",
        f"SELECT event_id FROM inbox WHERE consumer = %s AND {REPORTS}",
        console_group,
    )
    dead = system.scalar("console", "SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL") + system.scalar(
        "indexer", "SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL"
    )
    divergent = await _divergent_documents(system, corpora)
    f.details["lost"] = {
        "changes_not_in_indexer_inbox": len(changes - set(indexed_in)),
        "reports_not_in_console_inbox": len(reports - set(reported_in)),
        "dead_lettered_outbox_rows": dead,
        "divergent_documents": len(divergent),
    }
    f.details["divergent_sample"] = divergent[:5]
    f.lost = sum(f.details["lost"].values())

    twice_reported = system.scalar(
        "indexer",
        "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM outbox "
        f"WHERE {REPORTS} GROUP BY aggregate_id, aggregate_version, event_type) t",
    )
    f.details["duplicated"] = {
        "indexer_inbox_repeats": len(indexed_in) - len(set(indexed_in)),
        "console_inbox_repeats": len(reported_in) - len(set(reported_in)),
        "reports_for_one_version_twice": int(twice_reported),
    }
    f.duplicated = sum(f.details["duplicated"].values())

    phantom_ids = {p.event_id for p in load.phantoms}
    console_inbox_all = set(_ids(system, "console", "SELECT event_id FROM inbox"))
    indexer_inbox_all = set(_ids(system, "indexer", "SELECT event_id FROM inbox"))
    f.details["phantom"] = {
        "processed_but_never_committed": len(set(indexed_in) - changes) + len(set(reported_in) - reports),
        "rolled_back_ids_in_an_inbox": len(phantom_ids & (console_inbox_all | indexer_inbox_all)),
        "rolled_back_versions_indexed": system.scalar(
            "indexer", "SELECT count(*) FROM indexed_documents WHERE version >= %s", PHANTOM_BUMP
        ),
        "rolled_back_markers_in_segments": system.scalar(
            "indexer", "SELECT count(*) FROM segments WHERE content LIKE '%%phantom%%'"
        ),
        "rolled_back_markers_found_by_search": sum(
            [bool(await p.corpus.user.search(p.corpus.ds, p.marker)) for p in load.phantoms]
        ),
    }
    f.phantom = sum(f.details["phantom"].values())
    return f


async def _divergent_documents(system: System, corpora: list[Corpus]) -> list[dict[str, Any]]:
    """Console's final state of every document it ever had vs what the indexer serves for it."""
    live = {
        str(r[0]): r
        for r in system.rows(
            "console", "SELECT id, version, enabled, archived, indexing_status FROM documents"
        )
    }
    last = dict(
        system.rows(
            "console",
            f"SELECT aggregate_id, max(aggregate_version) FROM outbox WHERE {CHANGES} GROUP BY aggregate_id",
        )
    )
    owners = {doc: c for c in corpora for doc in _all_docs(system, c)}
    out = []
    for doc, last_version in last.items():
        corpus = owners.get(doc)
        if corpus is None:
            continue  # a document of another account (none in this test)
        served = await corpus.user.indexed(doc)
        if doc in live:
            _, version, enabled, archived, status = live[doc]
            want = {"version": version, "searchable": enabled and not archived, "status": "completed"}
            got = {
                "version": served and served["version"],
                "searchable": served and served["searchable"],
                "status": status,
            }
        else:  # deleted: the index must have forgotten it, at the deletion's version
            tomb = system.rows("indexer", "SELECT version, deleted FROM indexed_documents WHERE id = %s", doc)
            want = {"served": None, "tombstone": [(last_version, True)]}
            got = {"served": served, "tombstone": tomb}
        if want != got:
            out.append({"document": doc, "console": want, "indexer": got})
    return out


def _all_docs(system: System, corpus: Corpus) -> list[str]:
    return _ids(
        system,
        "console",
        f"SELECT DISTINCT aggregate_id FROM outbox WHERE {CHANGES} AND payload->>'dataset_id' = %s",
        corpus.ds,
    )


def render(f: Figures, load: LoadStats, faults: dict[str, Any]) -> str:
    lines = [
        "chaos figures",
        f"  changes committed  {f.committed}  (reports {f.reports}; HTTP ok {load.ok}, refused {load.refused}, "
        f"errors {load.errors})",
        f"  rollbacks injected {load.http_rollbacks} HTTP (409) + {len(load.phantoms)} direct (OutboxWriter)",
        f"  kills              {faults['kills']}",
        f"  outage seconds     {faults['outage_s']:.1f}  {faults['outages']}",
        f"  recovery seconds   {faults.get('recoveries_s', {})}",
        f"  quiesced           {f.quiesced} in {f.quiescence_s:.1f}s  backlog {f.details['backlog']}",
        f"  lost               {f.lost}  {f.details['lost']}",
        f"  duplicated         {f.duplicated}  {f.details['duplicated']}",
        f"  phantom            {f.phantom}  {f.details['phantom']}",
    ]
    if f.details.get("divergent_sample"):
        lines.append(f"  divergent sample   {f.details['divergent_sample']}")
    return "\n".join(lines)
