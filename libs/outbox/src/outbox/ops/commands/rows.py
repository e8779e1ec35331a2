"""`outbox replay`, `outbox redrive` and `outbox skip-gap`: operator actions on rows of a database (admin.py,
gaps.py). Each is a dry run unless `--yes`."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from outbox.ops.commands.output import TABLE_ROWS, add_json_flag, line, print_json, short, table, warn, when
from outbox.ops.errors import OperatorError
from outbox.ops.when import ACCEPTED, parse_when

PARTIAL_REPLAY = (
    "--type replays some of an aggregate's events without the others. A consumer that already applied "
    "them skips them, but one rebuilt from scratch would apply, say, `created` without the later `deleted` "
    "and resurrect the aggregate. Replay whole aggregates (--topic/--aggregate-id/--since), or add "
    "--allow-partial if every consumer of these events already holds the rest of the history."
)

OUT_OF_ORDER = (
    "refused the rows under out_of_order: later rows of their aggregates were already published (retained, "
    "or pruned since: pruned_through, newer_version_pruned), so they would reach consumers after their "
    "successors. --reorder sends each again followed by those later rows (the topic ends in order; consumers "
    "with an inbox skip what they applied; not possible once the newest of them was pruned); --force sends "
    "it alone."
)


def add_parsers(sub: Any, common: argparse.ArgumentParser, with_db: Any) -> None:
    replay = with_db(
        sub.add_parser(
            "replay",
            help="publish retained (already published) events again, in order",
            parents=[common],
        )
    )
    replay.add_argument(
        "--topic", help="only events of this topic (logical name, without OUTBOX_TOPIC_PREFIX)"
    )
    replay.add_argument("--type", dest="event_type", help="only events of this type (needs --allow-partial)")
    replay.add_argument("--aggregate-id", help="only events of this aggregate")
    replay.add_argument("--since", type=parse_when, help=f"events that occurred since: {ACCEPTED}")
    replay.add_argument("--until", type=parse_when, help=f"events that occurred before: {ACCEPTED}")
    replay.add_argument(
        "--yes", action="store_true", help="do it (without: count what would be replayed and show a sample)"
    )
    replay.add_argument(
        "--allow-partial",
        action="store_true",
        help="with --type: replay only some event types of each aggregate, knowing that a consumer rebuilt "
        "from scratch could apply `created` without the later `deleted` (do it only when every consumer "
        "already holds the rest of the history)",
    )
    replay.add_argument(
        "--sample", type=int, default=10, help="dry run: show the first N events it would send (default 10)"
    )
    add_json_flag(replay)

    redrive = with_db(
        sub.add_parser("redrive", help="send dead-lettered rows through the relay again", parents=[common])
    )
    redrive.add_argument(
        "--id", dest="ids", type=int, action="append", help="row id (repeatable); default all"
    )
    redrive.add_argument("--yes", action="store_true", help="do it (without: count what would be redriven)")
    ordering = redrive.add_mutually_exclusive_group()
    ordering.add_argument(
        "--reorder",
        action="store_true",
        help="a dead row whose aggregate published later rows goes out again followed by those rows",
    )
    ordering.add_argument(
        "--force", action="store_true", help="send such a dead row alone, after its successors"
    )
    add_json_flag(redrive)

    skip = with_db(
        sub.add_parser(
            "skip-gap",
            help="give up the missing version a gap-aware consumer's parked events wait for (its database)",
            parents=[common],
        )
    )
    skip.add_argument("--consumer", required=True, help="the consumer's name (its group and inbox key)")
    skip.add_argument("--topic", required=True, help="the logical topic (without OUTBOX_TOPIC_PREFIX)")
    skip.add_argument("--aggregate", required=True, help="the aggregate id (the events' subject)")
    skip.add_argument("--yes", action="store_true", help="do it (without: say what would be skipped)")
    add_json_flag(skip)


async def _admin(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from outbox.database_url import psycopg_url
    from outbox.ops import admin, gaps

    engine = create_async_engine(psycopg_url(args.database_url))
    try:
        if args.command == "skip-gap":
            return await gaps.skip_gap(engine, args.consumer, args.topic, args.aggregate, yes=args.yes)
        if args.command == "replay":
            selection = admin.Selection(
                topic=args.topic,
                event_type=args.event_type,
                aggregate_id=args.aggregate_id,
                since=args.since,
                until=args.until,
            )
            return await admin.replay(engine, selection, dry_run=not args.yes, sample=args.sample)
        order = (
            admin.RedriveOrder.REORDER
            if args.reorder
            else admin.RedriveOrder.FORCE
            if args.force
            else admin.RedriveOrder.REFUSE
        )
        return await admin.redrive(engine, ids=args.ids, dry_run=not args.yes, order=order)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    if args.command == "replay" and args.event_type and not args.allow_partial:
        raise OperatorError(PARTIAL_REPLAY)
    result = asyncio.run(_admin(args))
    if args.json:
        print_json(result)
    else:
        {"replay": _render_replay, "redrive": _render_redrive, "skip-gap": _render_skip}[args.command](result)
    if args.command == "skip-gap" and not args.yes:
        warn("skip-gap", "refused without --yes (nothing changed): see would_skip")
        return 1
    if args.command == "redrive" and args.yes and result.get("cannot_reorder"):
        for row in result["cannot_reorder"]:
            warn("redrive", f"refused row {row['id']} under --reorder: {row['reason']}")
        return 1
    if (
        args.command == "redrive"
        and result.get("out_of_order")
        and args.yes
        and not (args.reorder or args.force)
    ):
        warn("redrive", OUT_OF_ORDER)
        return 1
    return 0


def _render_replay(result: dict[str, Any]) -> None:
    if "replayed" in result:
        line(f"replayed {result['replayed']} event(s): the relay publishes them again, in order")
        return
    sample = result.get("sample") or []
    if sample:
        table(
            None,
            ["id", "topic", "type", "aggregate", "version", "occurred"],
            [
                (
                    r["id"],
                    r["topic"],
                    r["event_type"],
                    r["aggregate_id"],
                    r["aggregate_version"],
                    when(r["occurred_at"]),
                )
                for r in sample
            ],
        )
    more = result["would_replay"] - len(sample)
    line(
        f"dry run: {result['would_replay']} event(s) would be replayed"
        + (f" (the first {len(sample)} above, {more} more)" if sample and more > 0 else "")
        + "; add --yes to do it"
    )


def _render_redrive(result: dict[str, Any]) -> None:
    late = result.get("out_of_order") or []
    if late:
        table(
            "out of order: later rows of their aggregate already went out",
            ["id", "aggregate", "version", "published after", "pruned through", "newer version pruned"],
            [
                (
                    r["id"],
                    r["aggregate_id"],
                    r["version"],
                    short(", ".join(map(str, r["published_after"])), 40),
                    r["pruned_through"],
                    "yes" if r["newer_version_pruned"] else "",
                )
                for r in late
            ],
            limit=TABLE_ROWS,
            more="more out of order (--json: all)",
        )
    for row in result.get("cannot_reorder") or []:
        line(f"cannot reorder row {row['id']}: {row['reason']}")
    if "would_redrive" in result:
        line(
            f"dry run{'' if result['order'] == 'refuse' else ' (--' + result['order'] + ')'}: "
            f"{result['would_redrive']} dead row(s) would be redriven, "
            f"{result['would_resend']} published row(s) re-sent after them; add --yes to do it"
        )
    else:
        line(
            f"redriven {result['redriven']} dead row(s), re-sent {result['resent']}, refused {result['refused']}"
        )


def _render_skip(result: dict[str, Any]) -> None:
    plan = result.get("would_skip") or result.get("skipped") or {}
    verb = "would skip" if "would_skip" in result else "skipped"
    line(
        f"{result['consumer']} {result['topic']} {result['aggregate_id']}: {verb} the versions after "
        f"v{plan.get('after')} through v{plan.get('through')}; then due: {plan.get('due')}; "
        f"still parked behind a further gap: {plan.get('still_parked') or 'none'}"
    )
    if result.get("note"):
        line(f"note: {result['note']}")
