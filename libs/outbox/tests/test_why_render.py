"""`outbox why`'s text for people, from a report (no database): a long list is cut to its first and last
entries with a count, while the report itself (`--json`) keeps every one."""

from __future__ import annotations

from typing import Any

from outbox.ops.why_render import render


def _row(i: int, state: str) -> dict[str, Any]:
    return {
        "id": i,
        "topic": "docs",
        "event_type": "docs.changed",
        "aggregate_version": i,
        "reason": f"{state} reason {i}",
        "state": state,
        "last_error": "broker said no" if state == "dead" else None,
    }


def test_an_aggregate_with_thousands_of_waiting_rows_shows_the_first_the_last_and_a_count() -> None:
    rows = [_row(1, "dead")] + [_row(i, "held") for i in range(2, 2001)]
    parked = [{"version": v, "parked_at": "t", "prev_version": v - 1} for v in range(10, 40)]
    report: dict[str, Any] = {
        "target": "doc-1",
        "matched": "aggregate id",
        "heads": [],
        "rows": rows,
        "held_by": None,
        "lock_holders": [],
        "consumers": [
            {
                "database": "db",
                "groups": ["g"],
                "states": [
                    {
                        "group": "g",
                        "topic": "docs",
                        "applied_version": 8,
                        "behind": 1992,
                        "head_version": 2000,
                    }
                    | {"parked": parked}
                ],
            }
        ],
        "next": "row #1 is dead",
    }
    text = render(report)
    lines = text.splitlines()
    assert len(lines) < 50
    assert "#1 docs docs.changed v1: dead reason 1  error: broker said no" in text  # the first: the cause
    assert "#10 " in text and "#11 " not in text and "#1996 " in text and "#2000 " in text
    assert "… 1985 more row(s) (--json: all)" in text
    assert (
        "parked v10 " in text and "… 15 more parked event(s) (--json: all)" in text and "parked v39 " in text
    )
    assert lines[-1] == "next: row #1 is dead"
    assert len(report["rows"]) == 2000  # the report is untouched


def test_a_short_list_is_shown_whole() -> None:
    report: dict[str, Any] = {
        "target": "doc-2",
        "matched": "aggregate id",
        "heads": [],
        "rows": [_row(i, "ready") for i in range(1, 17)],
        "held_by": None,
        "lock_holders": [],
        "consumers": [],
        "next": "n",
    }
    assert all(f"#{i} " in render(report) for i in range(1, 17)) and "more row(s)" not in render(report)
