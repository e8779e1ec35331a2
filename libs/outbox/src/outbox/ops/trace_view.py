"""A terminal view of traces written by `OTEL_SPANS_FILE` (JSON lines, with its rotated `FILE.1`, `FILE.2`, ...):
one tree per trace, the newest last.

    outbox trace [SPANS_FILE] [--trace-id ID] [--request-id ID] [--service S] [--name TEXT]
                 [--since WHEN] [--until WHEN] [--idle] [--last N]

A trace is shown when it matches every filter given: its id; a span carrying the request id (the services'
`request.id` attribute: the gateway's X-Request-ID); a span of the service; a span whose name contains the
text; a start within the time window. Idle traces (no request and no message: the background loops'
lone database statements) are hidden unless --idle or --trace-id.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

Span = dict[str, Any]

REQUEST_ID_ATTRIBUTE = "request.id"  # set by servicekit.request_trace on the server span
# A request (SERVER) or a message (PRODUCER, CONSUMER): what makes a trace worth showing by default.
ACTIVE_KINDS = frozenset({"SERVER", "PRODUCER", "CONSUMER"})
DEFAULT_FILE = Path(".stack/spans.jsonl")  # what `make run` writes
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class TraceFilter:
    trace_id: str | None = None
    request_id: str | None = None
    services: tuple[str, ...] = ()
    name: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    idle: bool = False  # also idle traces

    def matches(self, members: list[Span]) -> bool:
        if self.trace_id:
            return bool(members[0]["trace_id"] == self.trace_id)
        start = datetime.fromtimestamp(min(s["start"] for s in members) / 1e9, UTC)
        if (self.since and start < self.since) or (self.until and start > self.until):
            return False
        if self.request_id and not any(
            (s.get("attributes") or {}).get(REQUEST_ID_ATTRIBUTE) == self.request_id for s in members
        ):
            return False
        if self.services and not any(s.get("service") in self.services for s in members):
            return False
        if self.name and not any(self.name.lower() in str(s.get("name", "")).lower() for s in members):
            return False
        return self.idle or not is_idle(members)


def is_idle(members: list[Span]) -> bool:
    """No request and no message in it: a background loop's work (a relay's poll, a purge's statement)."""
    return not any(s.get("kind") in ACTIVE_KINDS for s in members)


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """`15m`, `2h`, `1d`, `30s`, `1w` ago, or an ISO 8601 timestamp (without an offset: local time)."""
    now = now or datetime.now(UTC)
    duration = _DURATION.fullmatch(text.strip())
    if duration:
        return now - timedelta(**{_UNITS[duration.group(2)]: float(duration.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (15m, 2h, 1d) nor an ISO timestamp (2026-01-31T14:00)"
        ) from None
    return when if when.tzinfo else when.astimezone()


def span_files(path: Path) -> list[Path]:
    """The file and its rotated predecessors (span_file.py), oldest first."""
    rotated = []
    for candidate in path.parent.glob(f"{path.name}.*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), candidate))
    return [p for _, p in sorted(rotated, reverse=True)] + ([path] if path.exists() else [])


def load_spans(path: Path, *, containing: str | None = None) -> list[Span]:
    """Every span of the set (a span seen twice, read across a rotation, counts once). `containing`: only
    lines with this text (a cheap pre-filter for a trace id, which every one of its spans' lines holds).
    A line cut short (being written, or a crash mid-write) is skipped."""
    spans: dict[tuple[str, str], Span] = {}
    for file in span_files(path):
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:  # rotated away while reading
            continue
        for line in text.splitlines():
            if not line.strip() or (containing and containing not in line):
                continue
            try:
                span = json.loads(line)
            except json.JSONDecodeError:
                continue
            spans[(span["trace_id"], span["span_id"])] = span
    return list(spans.values())


def select(spans: Iterable[Span], where: TraceFilter, *, last: int = 5) -> list[list[Span]]:
    """The `last` newest traces matching `where`, oldest first, each as its spans."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    matching = [members for members in by_trace.values() if where.matches(members)]
    matching.sort(key=lambda members: min(s["start"] for s in members))
    return matching[-last:] if last > 0 else []


def render(
    spans: Iterable[Span],
    *,
    trace_id: str | None = None,
    last: int = 5,
    where: TraceFilter | None = None,
) -> str:
    return render_traces(select(spans, where or TraceFilter(trace_id=trace_id), last=last))


def render_traces(traces: list[list[Span]]) -> str:
    out: list[str] = []
    for members in traces:
        t0 = min(s["start"] for s in members)
        t1 = max(s["end"] for s in members)
        services = sorted({str(s.get("service")) for s in members})
        at = datetime.fromtimestamp(t0 / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        request_ids = sorted(
            {str(r) for s in members if (r := (s.get("attributes") or {}).get(REQUEST_ID_ATTRIBUTE))}
        )
        requests = f"  request {', '.join(request_ids)}" if request_ids else ""
        out.append(
            f"trace {members[0]['trace_id']}  {len(members)} spans  {(t1 - t0) / 1e6:.1f} ms  "
            f"services: {', '.join(services)}  at {at}{requests}"
        )
        ids = {s["span_id"] for s in members}
        children: dict[str | None, list[Span]] = defaultdict(list)
        for s in members:
            parent = s.get("parent_id")
            children[parent if parent in ids else None].append(s)
        _walk(children, None, 0, t0, out)
        out.append("")
    if not traces:
        out.append("no matching trace")
    return "\n".join(out)


def _walk(
    children: dict[str | None, list[Span]], parent: str | None, depth: int, t0: int, out: list[str]
) -> None:
    for s in sorted(children.get(parent, []), key=lambda s: s["start"]):
        offset = (s["start"] - t0) / 1e6
        duration = (s["end"] - s["start"]) / 1e6
        flag = "  !" if s.get("status") == "ERROR" else ""
        out.append(
            f"  {'  ' * depth}+{offset:8.1f} ms {duration:8.1f} ms  [{s.get('service')}] {s['name']}{flag}"
        )
        _walk(children, s["span_id"], depth + 1, t0, out)


# -- the `outbox trace` command (outbox.ops.cli) ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spans_file",
        nargs="?",
        type=Path,
        help=f"the spans file (default: OTEL_SPANS_FILE, else {DEFAULT_FILE}, where `make run` writes); "
        "its rotated FILE.1, FILE.2, ... are read too",
    )
    parser.add_argument(
        "--trace-id", metavar="ID", help="this trace only (32 hex digits: a response's X-Trace-Id)"
    )
    parser.add_argument("--request-id", metavar="ID", help="traces of this request (its X-Request-ID)")
    parser.add_argument(
        "--service",
        metavar="SERVICE",
        dest="services",
        action="append",
        default=[],
        help="traces with a span of this service (repeatable)",
    )
    parser.add_argument(
        "--name", metavar="TEXT", help="traces with a span whose name contains this text (case-insensitive)"
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        type=parse_when,
        help="traces started since: 15m, 2h, 1d ago, or an ISO timestamp",
    )
    parser.add_argument(
        "--until",
        metavar="WHEN",
        type=parse_when,
        help="traces started until: a duration ago or an ISO timestamp",
    )
    parser.add_argument(
        "--idle", action="store_true", help="also show idle traces (no request, no message: background loops)"
    )
    parser.add_argument(
        "--last", metavar="N", type=int, default=5, help="show the N newest matching traces (default 5)"
    )


def run(args: argparse.Namespace) -> tuple[int, str]:
    """The exit code and what to print: the traces (0), or one line for stderr (1: none matched; 2: no
    spans file)."""
    path: Path | None = args.spans_file
    if path is None:
        env = os.environ.get("OTEL_SPANS_FILE")
        path = Path(env) if env else DEFAULT_FILE
    if not span_files(path):
        return 2, (
            f"outbox trace: no spans file at {path}: give its path, or set OTEL_SPANS_FILE "
            "(`make run` writes .stack/spans.jsonl)"
        )
    where = TraceFilter(
        trace_id=args.trace_id.lower() if args.trace_id else None,
        request_id=args.request_id,
        services=tuple(args.services),
        name=args.name,
        since=args.since,
        until=args.until,
        idle=args.idle,
    )
    traces = select(load_spans(path, containing=where.trace_id), where, last=args.last)
    if not traces and where.trace_id:
        return 1, f"outbox trace: no span of trace {where.trace_id} in {path} or its rotated files"
    if not traces:
        return 1, "outbox trace: no matching trace (idle traces are hidden: --idle shows them)"
    return 0, render_traces(traces)


def main(args: argparse.Namespace) -> int:
    code, text = run(args)
    try:
        print(text, file=sys.stderr if code else sys.stdout, flush=True)
    except BrokenPipeError:  # piped into `head` or a pager that quit early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return code
