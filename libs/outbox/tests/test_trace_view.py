"""The terminal trace view: rendering and filtering spans written by the JSON-lines exporter, and the
`outbox trace` command itself (a real process) on a spans file."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from outbox.ops.trace_view import TraceFilter, parse_when, render, select

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def span(
    name: str,
    service: str,
    span_id: str,
    parent: str | None,
    start: int,
    end: int,
    *,
    kind: str = "INTERNAL",
    trace_id: str = "t1",
    attributes: dict[str, str] | None = None,
) -> dict[str, object]:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": parent,
        "name": name,
        "service": service,
        "kind": kind,
        "start": start,
        "end": end,
        "status": "UNSET",
        "attributes": attributes or {},
    }


def at(minutes_ago: float) -> int:
    """A span start `minutes_ago` before NOW, in the exporter's unit (ns since the epoch)."""
    return int((NOW - timedelta(minutes=minutes_ago)).timestamp() * 1e9)


def test_render_nests_children_under_parents_across_services() -> None:
    spans = [
        span("console.document process", "indexer", "c", "b", 3_000_000, 9_000_000, kind="CONSUMER"),
        span("PATCH /enable", "console", "a", None, 0, 2_000_000, kind="SERVER"),
        span("console.document publish", "console-relay", "b", "a", 2_500_000, 2_800_000, kind="PRODUCER"),
        span("unrelated root", "auth", "z", None, 50_000_000, 51_000_000, kind="SERVER", trace_id="t2"),
    ]
    text = render(spans, trace_id="t1")
    lines = text.splitlines()
    assert lines[0].startswith("trace t1  3 spans  9.0 ms  services: console, console-relay, indexer")
    assert lines[0].endswith("at 1970-01-01T00:00:00.000Z")
    assert [line.strip().split("]")[1].strip() for line in lines[1:4]] == [
        "PATCH /enable",
        "console.document publish",
        "console.document process",
    ]
    indents = [len(line) - len(line.lstrip()) for line in lines[1:4]]
    assert indents[0] < indents[1] < indents[2]
    assert "unrelated" not in text
    assert render(spans, trace_id="nope") == "no matching trace"
    assert render(spans, last=1).startswith("trace t2")


# Three traces 50, 20 and 5 minutes before NOW: a request with its event carried on, a lone background
# statement (idle), an indexer request.
SPANS = [
    span("POST /console/api/datasets", "console", "a1", None, at(50), at(50) + 9_000_000, kind="SERVER",
         trace_id="aa" * 16, attributes={"request.id": "req-1"}),
    span("send console.dataset", "console-relay", "a2", "a1", at(49), at(49) + 1_000, kind="PRODUCER",
         trace_id="aa" * 16),
    span("DELETE", "auth", "b1", None, at(20), at(20) + 1_000, kind="CLIENT", trace_id="bb" * 16),
    span("GET /indexer/api/search", "indexer", "c1", None, at(5), at(5) + 1_000, kind="SERVER",
         trace_id="cc" * 16, attributes={"request.id": "req-2"}),
]  # fmt: skip


def chosen(where: TraceFilter) -> list[str]:
    return [members[0]["trace_id"][:2] for members in select(SPANS, where, last=10)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (TraceFilter(), ["aa", "cc"]),  # idle hidden by default
        (TraceFilter(idle=True), ["aa", "bb", "cc"]),
        (TraceFilter(trace_id="bb" * 16), ["bb"]),  # an id asked for is shown, idle or not
        (TraceFilter(request_id="req-1"), ["aa"]),
        (TraceFilter(request_id="req-9"), []),
        (TraceFilter(services=("console-relay",)), ["aa"]),  # any span of the trace
        (TraceFilter(services=("indexer", "console")), ["aa", "cc"]),
        (TraceFilter(name="search"), ["cc"]),
        (TraceFilter(name="SEND CONSOLE"), ["aa"]),
        (TraceFilter(since=NOW - timedelta(minutes=30)), ["cc"]),
        (TraceFilter(until=NOW - timedelta(minutes=30)), ["aa"]),
        (TraceFilter(since=NOW - timedelta(minutes=30), idle=True), ["bb", "cc"]),
        (TraceFilter(services=("indexer",), since=NOW - timedelta(hours=1), name="datasets"), []),
    ],
)
def test_filters(where: TraceFilter, expected: list[str]) -> None:
    assert chosen(where) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2026-04-30T08:00:00Z", datetime(2026, 4, 30, 8, tzinfo=UTC)),
        ("2026-04-30T10:00:00+02:00", datetime(2026, 4, 30, 8, tzinfo=UTC)),
    ],
)
def test_when_is_a_duration_ago_or_a_timestamp(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == expected


def test_a_timestamp_without_offset_is_local_time() -> None:
    assert parse_when("2026-04-30T08:00") == datetime(2026, 4, 30, 8).astimezone()


# -- the command ----------------------------------------------------------------------------------------------


def outbox_trace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.ops.cli", "trace", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def spans_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SPANS shifted to now (the command's --since counts back from the real clock), one trace rotated."""
    shift = int(datetime.now(UTC).timestamp() * 1e9) - at(0)
    path = tmp_path_factory.mktemp("trace") / "spans.jsonl"
    lines = [json.dumps(s | {"start": s["start"] + shift, "end": s["end"] + shift}) for s in SPANS]  # type: ignore[operator]
    path.with_name("spans.jsonl.1").write_text("\n".join(lines[:2]) + "\n")
    path.write_text("\n".join(lines[2:]) + "\n" + lines[3][:40])  # a line still being written
    return path


def test_the_command_filters_across_the_rotated_set(spans_file: Path) -> None:
    done = outbox_trace(str(spans_file), "--since", "1h")
    assert done.returncode == 0, done.stderr
    assert [line.split()[1][:2] for line in done.stdout.splitlines() if line.startswith("trace ")] == [
        "aa",
        "cc",
    ]
    assert "request req-1" in done.stdout
    one = outbox_trace(str(spans_file), "--request-id", "req-1")
    assert (
        one.stdout.startswith(f"trace {'aa' * 16}  2 spans")
        and "[console-relay] send console.dataset" in one.stdout
    )
    idle = outbox_trace(str(spans_file), "--idle", "--service", "auth")
    assert idle.returncode == 0 and idle.stdout.startswith(f"trace {'bb' * 16}"), idle.stderr


def test_the_command_says_in_one_line_when_nothing_matches_or_there_is_no_file(
    spans_file: Path, tmp_path: Path
) -> None:
    none = outbox_trace(str(spans_file), "--service", "auth")  # only an idle trace
    assert (none.returncode, none.stdout) == (1, "")
    assert (
        none.stderr.strip() == "outbox trace: no matching trace (idle traces are hidden: --idle shows them)"
    )
    missing = outbox_trace(str(tmp_path / "nowhere.jsonl"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "no spans file at" in missing.stderr
    wrong = outbox_trace(str(spans_file), "--since", "yesterday")
    assert wrong.returncode == 2 and "neither a duration" in wrong.stderr and "Traceback" not in wrong.stderr
