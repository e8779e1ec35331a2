"""`outbox why`'s judgement and text: where each consumer group stands, the next step, the human report.

Pure functions over the report `why.explain` gathers (no I/O), so each sentence is tested through the CLI
against real databases and stays beside the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def head_versions(report: dict[str, Any]) -> dict[str, int]:
    """Per topic: the aggregate's last version written (its head; else the newest retained row's)."""
    versions: dict[str, int] = {}
    for row in report["rows"]:
        if row["aggregate_version"] is not None:
            versions[row["topic"]] = max(versions.get(row["topic"], 0), int(row["aggregate_version"]))
    for head in report["heads"]:
        if head["version"] is not None:
            versions[head["topic"]] = max(versions.get(head["topic"], 0), int(head["version"]))
    return versions


def group_states(report: dict[str, Any]) -> None:
    """Adds `states` to each reachable consumer database: one entry per (group, topic) that applies the
    aggregate's topic: applied version, versions behind the head, parked events, and for an event where
    it is (applied, parked, or why it has not arrived)."""
    heads = head_versions(report)
    event = report["rows"][0] if report["kind"] == "event" and report["rows"] else None
    for side in report["consumers"]:
        if "error" in side:
            continue
        applied = {(a["consumer"], a["topic"]): int(a["version"]) for a in side.get("applied_versions", [])}
        keys = {(g, t) for g, topics in side.get("reads", {}).items() for t in topics} | set(applied)
        keys |= {(p["consumer"], p["topic"]) for p in side["parked"]}
        keys |= {(i["consumer"], i["topic"]) for i in side.get("inbox", [])}
        states = []
        for group, topic in sorted(keys):
            version = applied.get((group, topic))
            head = heads.get(topic)
            state: dict[str, Any] = {
                "group": group,
                "topic": topic,
                "applied_version": version,
                "head_version": head,
                "behind": max(head - version, 0) if head is not None and version is not None else None,
                "parked": [p for p in side["parked"] if (p["consumer"], p["topic"]) == (group, topic)],
            }
            inbox = [i for i in side.get("inbox", []) if i["consumer"] == group]
            if report["kind"] == "event":
                state["event"] = _event_state(event, version, inbox, state["parked"])
            states.append(state)
        side["states"] = states


def _event_state(
    event: dict[str, Any] | None,
    applied: int | None,
    inbox: list[dict[str, Any]],
    parked: list[dict[str, Any]],
) -> str:
    if inbox:
        i = inbox[0]
        return f"{i['outcome']} from {i['topic']}[{i['partition']}]@{i['offset']} at {i['processed_at']}"
    if event is not None and any(p["event_id"] == event["event_id"] for p in parked):
        return f"parked: waits for v{event['prev_version']}"
    if event is None:
        return "not in this group's inbox"
    version = event["aggregate_version"]
    if applied is not None and version is not None and applied >= version:
        return f"not in the inbox, but the group is at v{applied} (≥ v{version}): inbox row pruned, or superseded"
    where = f"at v{applied}" if applied is not None else "with nothing applied for this aggregate"
    if event["published_at"] is None:
        return f"not arrived: still in the outbox ({event['state']}); the group is {where}"
    return f"not arrived: published at {event['published_at']}, not applied yet; the group is {where}"


def next_step(report: dict[str, Any]) -> str:
    """One sentence: the first thing to look at, from the producer's side to the consumers'."""
    group_states(report)
    rows = [r for r in report["rows"] if r["published_at"] is None]
    for row in rows:
        if row["state"] == "dead":
            return (
                f"row #{row['id']} is dead after {row['attempts']} attempt(s) ({row['last_error']}): fix the "
                f"cause, then `outbox redrive --id {row['id']} --yes`"
            )
    for row in rows:
        if row["state"] == "backoff":
            return (
                f"row #{row['id']} failed to publish ({row['last_error']}); the relay retries at "
                f"{row['available_at']}: its log says why"
            )
    writers = [h for h in report["lock_holders"] if h["holds"] == "the aggregate's writer lock"]
    if writers:
        return (
            f"an open transaction (pid {writers[0]['pid']}) holds the aggregate's writer lock: its events "
            "wait for it to commit or roll back"
        )
    for row in rows:
        if row["state"] == "ready":
            return (
                f"row #{row['id']} is ready since {row['available_at']} and no relay claimed it: is the relay "
                "running? see `outbox status`"
            )
    if rows:
        return f"a relay is publishing row #{rows[0]['id']} now: run this again in a few seconds"
    for side in report["consumers"]:
        if "error" in side:
            return f"consumer database {side['database']} did not answer: {side['error']}"
        for s in side.get("states", []):
            if s["parked"]:
                p = s["parked"][0]
                return (
                    f"consumer group {s['group']} parked v{p['version']} waiting for v{p['prev_version']}: "
                    f"redrive that version upstream, or `outbox skip-gap --consumer {s['group']} --topic "
                    f"{s['topic']} --aggregate {report['aggregate_id']}` if it will never come"
                )
            if s["behind"]:
                return (
                    f"consumer group {s['group']} is {s['behind']} version(s) behind (applied "
                    f"v{s['applied_version']}, head v{s['head_version']}): is its consumer running? see "
                    f"`outbox status --group {s['group']}`"
                )
            if s["head_version"] is not None and s["applied_version"] is None:
                return (
                    f"consumer group {s['group']} applied nothing of this aggregate yet (head "
                    f"v{s['head_version']}): is its consumer running? see `outbox status --group {s['group']}`"
                )
    if report["matched"] == "nothing":
        other = "--aggregate" if report["kind"] == "event" else "--event"
        where = (
            "the consumer databases given" if report["consumers"] else "this outbox (add --consumer-db URL)"
        )
        return f"no {report['kind']} has this id in {where}: try {other}, or check --database-url"
    if not report["consumers"]:
        return "nothing waits in the outbox; add --consumer-db URL to see where each consumer group stands"
    return "nothing waits: the outbox published everything and every consumer group shown is up to date"


def render(report: dict[str, Any]) -> str:
    """The report for a person: what matched, the head, the rows, the consumers, then the next step."""
    lines = [f"{report['target']}: {report['matched']}"]
    for head in report["heads"]:
        lines.append(
            f"head {head['topic']}: v{head['version']} (before: v{head['previous']}), written {head['written_at']}"
        )
    if not report["rows"] and report["matched"] != "nothing":
        lines.append("  no outbox row (published and pruned after the retention, or written elsewhere)")
    lines += _first_and_last(report["rows"], "row(s)", "  ", _row_line)
    held = report["held_by"]
    if held:
        lines.append(
            f"held back by #{held['id']} ({held['state']}, {held['attempts']} attempts): {held['last_error']}"
        )
    for h in report["lock_holders"]:
        lines.append(
            f"{h['holds']} held by pid {h['pid']} {h['application_name'] or ''} {h['state']} "
            f"since {h['xact_start']}: {h['query']}"
        )
    for side in report["consumers"]:
        lines.append(f"consumer database {side['database']}")
        if "error" in side:
            lines.append(f"  unreachable: {side['error']}")
            continue
        if not side["states"]:
            lines.append(
                f"  no group here applies these topics (groups: {', '.join(side['groups']) or 'none'})"
            )
        for s in side["states"]:
            where = (
                f"applied v{s['applied_version']}" if s["applied_version"] is not None else "nothing applied"
            )
            if s["behind"]:
                where += f", {s['behind']} behind v{s['head_version']}"
            elif s["behind"] == 0:
                where += " (up to date)"
            lines.append(f"  group {s['group']} {s['topic']}: {where}")
            if "event" in s:
                lines.append(f"    this event: {s['event']}")
            lines += _first_and_last(s["parked"], "parked event(s)", "    ", _parked_line)
    lines.append(f"next: {report['next']}")
    return "\n".join(lines)


SHOWN_FIRST, SHOWN_LAST = 10, 5  # of a long list, for people (--json has every entry)


def _row_line(r: dict[str, Any]) -> str:
    line = f"#{r['id']} {r['topic']} {r['event_type']} v{r['aggregate_version']}: {r['reason']}"
    return line + (f"  error: {r['last_error']}" if r["last_error"] and r["state"] != "published" else "")


def _parked_line(p: dict[str, Any]) -> str:
    return f"parked v{p['version']} since {p['parked_at']}, waits for v{p['prev_version']}"


def _first_and_last(
    items: list[dict[str, Any]], what: str, indent: str, line_of: Callable[[dict[str, Any]], str]
) -> list[str]:
    """An aggregate stuck behind a dead row can hold thousands of rows: the first and last few, and a count."""
    if len(items) <= SHOWN_FIRST + SHOWN_LAST + 1:
        return [indent + line_of(item) for item in items]
    hidden = len(items) - SHOWN_FIRST - SHOWN_LAST
    return [
        *(indent + line_of(item) for item in items[:SHOWN_FIRST]),
        f"{indent}… {hidden} more {what} (--json: all)",
        *(indent + line_of(item) for item in items[-SHOWN_LAST:]),
    ]
