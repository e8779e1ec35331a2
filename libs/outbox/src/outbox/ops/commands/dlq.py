"""`outbox dlq list|show|redrive|ack|purge --group G`: a consumer group's dead letters (ops/dlq.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from outbox.ops.commands.output import (
    TABLE_ROWS,
    add_json_flag,
    line,
    print_json,
    short,
    table,
    warn,
    when,
)

ID_LIST = 10  # ids named on the line after a redrive, ack or purge (all of them with --json)
HELP = "list, show, redrive, acknowledge or purge a consumer group's dead letters (<group>.dlq)"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    dlq = sub.add_parser("dlq", help=HELP, description=HELP, parents=[common])
    dlq.add_argument(
        "action",
        choices=["list", "show", "redrive", "ack", "purge"],
        help="list: one line each; show: headers and payload; redrive: republish to the original topic; "
        "ack: mark as handled without redriving; purge: hide redriven or acknowledged ones from list",
    )
    dlq.add_argument("--group", required=True, help="the consumer group whose <group>.dlq to read")
    dlq.add_argument(
        "--id", dest="ids", action="append", help="PARTITION:OFFSET on the dead-letter topic (repeatable)"
    )
    dlq.add_argument(
        "--yes",
        action="store_true",
        help="redrive, ack, purge: do it (without: list what would be done, change nothing)",
    )
    dlq.add_argument(
        "--all", dest="include_purged", action="store_true", help="list, show: include purged entries too"
    )
    dlq.add_argument(
        "--state",
        dest="states",
        action="append",
        choices=["dead", "redriven", "acked", "purged"],
        help="only entries in this state (repeatable)",
    )
    dlq.add_argument(
        "--limit",
        type=int,
        default=TABLE_ROWS,
        help=f"list and dry runs: show at most N entries in the table (default {TABLE_ROWS})",
    )
    add_json_flag(dlq)


def run(args: argparse.Namespace) -> int:
    from outbox.kafka import bootstrap_from_env
    from outbox.ops import dlq

    result = asyncio.run(
        dlq.run(
            bootstrap_from_env(),
            args.action,
            args.group,
            args.ids,
            yes=args.yes,
            include_purged=args.include_purged or bool(args.states and "purged" in args.states),
            states=args.states,
        )
    )
    if args.json:
        print_json(result)
    else:
        render(args, result)
    if result.get("mark_error"):
        warn("dlq", f"{args.action} done, but {result['mark_error']}")
        return 1
    return 0


def render(args: argparse.Namespace, result: dict[str, Any]) -> None:
    topic, action = result["topic"], args.action
    if action == "list":
        letters = result["dead_letters"]
        counts = "  ".join(f"{s} {n}" for s, n in result["states"].items() if n)
        line(f"{topic}: {result['count']} shown" + (f"  ({counts})" if counts else "  (empty)"))
        _summary_table(letters, args.limit)
        return
    if action == "show":
        for d in result["dead_letters"]:
            line(f"─ {topic} {d['id']}  {d['state']}")
            fields = [(k, d[k]) for k in ("event_id", "type", "subject", "original", "attempts")]
            fields += [
                ("dead-lettered at", d["dead_lettered_at"]),
                ("reason", d["reason"]),
                ("key", d["key"]),
            ]
            if d["state"] != "dead":
                fields += [(f"{d['state']} at", d[f"{d['state']}_at"]), ("by", d["marked_by"])]
            for name, value in fields:
                line(f"  {name:<17} {value}")
            line("  headers")
            for name, value in d["headers"].items():
                if not name.startswith("dlq_"):
                    line(f"    {name:<20} {value}")
            line("  value")
            line("    " + _pretty(d["value"]).replace("\n", "\n    "))
            line()
        return
    would = result.get(f"would_{action}")
    if would is not None:
        _summary_table(would, args.limit)
        line(f"dry run: {len(would)} dead letter(s) would be {_past(action)}; add --yes to do it")
        return
    done = result.get("redriven" if action == "redrive" else _past(action), 0)
    ids = result["ids"]
    listed = ", ".join(ids[:ID_LIST]) + (
        f" … and {len(ids) - ID_LIST} more (--json: all)" if len(ids) > ID_LIST else ""
    )
    line(f"{_past(action)} {done} dead letter(s) of {topic}: {listed or 'none'}")
    if action == "redrive":
        line(f"note: {result['note']}")


def _pretty(value: str) -> str:
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False)
    except ValueError:  # not JSON (or cut at 4000 characters): as it is
        return value


def _past(action: str) -> str:
    return {"redrive": "redriven", "ack": "acked", "purge": "purged"}[action]


def _summary_table(letters: list[dict[str, Any]], limit: int) -> None:
    if not letters:
        return
    table(
        None,
        ["id", "state", "type", "subject", "original", "tries", "dead-lettered", "reason"],
        [
            (
                d["id"],
                d["state"] + (f" x{d['redriven']}" if d["redriven"] > 1 else ""),
                d["type"],
                d["subject"],
                d["original"],
                d["attempts"],
                when(d["dead_lettered_at"]),
                short(d["reason"], 60),
            )
            for d in letters
        ],
        limit=limit,
        more="more (--limit, or --json for all)",
    )
