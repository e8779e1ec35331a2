"""`outbox tail TOPIC`: a topic's events, decoded (ops/tail.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from outbox.ops.commands.output import add_json_flag, line, print_json_line

HELP = "print a topic's events (CloudEvents headers and payload), like kcat; never joins a group"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    tail = sub.add_parser("tail", help=HELP, description=HELP, parents=[common])
    tail.add_argument(
        "topic", help="the topic (logical name: OUTBOX_TOPIC_PREFIX is added), e.g. console.document"
    )
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the topic's first record (default: the last N)",
    )
    tail.add_argument("--key", help="only records with this key (the aggregate id)")
    tail.add_argument("--type", dest="event_type", help="only events of this CloudEvents type (ce_type)")
    tail.add_argument(
        "-n",
        "--count",
        type=int,
        help="how many: the last N (default 10), or with --from-beginning the first N (default all)",
    )
    tail.add_argument(
        "-f", "--follow", action="store_true", help="then wait for new events and print them until Ctrl-C"
    )
    add_json_flag(tail, "one JSON object per line")


def run(args: argparse.Namespace) -> int:
    from outbox.kafka import bootstrap_from_env
    from outbox.ops.tail import TailQuery, tail

    query = TailQuery(
        topic=args.topic,
        key=args.key,
        event_type=args.event_type,
        count=args.count,
        from_beginning=args.from_beginning,
    )

    async def show() -> int:
        shown = 0
        async for event in tail(bootstrap_from_env(), query, follow=args.follow):
            shown += 1
            print_json_line(event) if args.json else render(event)
        if not args.json and not shown:
            line(f"no matching event on {args.topic}")
        return 0

    try:
        return asyncio.run(show())
    except KeyboardInterrupt:  # --follow ends with Ctrl-C
        return 0


def render(event: dict[str, Any]) -> None:
    attrs = event["event"]
    line(
        f"─ {event['topic']} [{event['partition']}] @{event['offset']}  {event['timestamp']}  key {event['key']}"
    )
    for name in ("type", "id", "source", "subject", "time", "aggregateversion", "prevversion"):
        if name in attrs:
            line(f"  {name:<17} {attrs[name]}")
    for name, value in attrs.items():
        if name not in (
            "type",
            "id",
            "source",
            "subject",
            "time",
            "aggregateversion",
            "prevversion",
            "specversion",
        ):
            line(f"  {name:<17} {value}")
    for name, value in event["headers"].items():
        line(f"  {name:<17} {value}")
    data = event["data"]
    text = json.dumps(data, indent=2, ensure_ascii=False) if not isinstance(data, str) else data
    line("  " + text.replace("\n", "\n  "))
    line()
