"""`outbox` command: run a relay, inspect an outbox, replay retained events, redrive dead-lettered rows.

    outbox relay   --database-url URL [--name NAME]
    outbox status  --database-url URL [--group G ...] [--json] [--max-age S] [--allow-dead]   (exit 1: dead rows or old backlog)
    outbox health  --heartbeat-file F [--max-age S]   (exit 1: the relay or consumer loop stopped turning)
    outbox dlq     list|show|redrive --group G [--id PARTITION:OFFSET ...] [--yes]
    outbox replay  --database-url URL [--topic T] [--type T] [--aggregate-id ID] [--since ISO] [--until ISO] [--yes]
    outbox redrive --database-url URL [--id N ...] [--reorder | --force] [--yes]
    outbox skip-gap --database-url URL --consumer NAME --topic T --aggregate ID [--yes]   (a consumer's database)
    outbox why     AGGREGATE_ID|EVENT_ID --database-url URL [--topic T] [--consumer-db URL ...] [--json]
    outbox trace   [SPANS_FILE] [--trace-id ID] [--request-id ID] [--service S] [--name TEXT] [--since WHEN]
                   [--until WHEN] [--idle] [--last N]   (WHEN: 15m, 2h, 1d ago, or an ISO timestamp)

The database URL may also come from OUTBOX_DATABASE_URL, its password apart from OUTBOX_DATABASE_PASSWORD
(each also as a file: OUTBOX_DATABASE_URL_FILE, OUTBOX_DATABASE_PASSWORD_FILE); the broker from KAFKA_BOOTSTRAP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from outbox.database_url import psycopg_url
from outbox.env_settings import SettingError, env_or_file, with_password
from outbox.ops import trace_view
from outbox.telemetry.heartbeat import heartbeat_age

# Every other import happens in the command that needs it: `outbox health` is a probe run every few seconds
# and must stay a few milliseconds of work, not an import of SQLAlchemy, aiokafka and OpenTelemetry.


def _database_url(given: str | None) -> str | None:
    """--database-url, else OUTBOX_DATABASE_URL(_FILE); with OUTBOX_DATABASE_PASSWORD(_FILE) set in it."""
    url = given or env_or_file("OUTBOX_DATABASE_URL")
    if not url:
        return None
    password = env_or_file("OUTBOX_DATABASE_PASSWORD")
    return with_password(psycopg_url(url), password, setting="OUTBOX_DATABASE_PASSWORD")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--database-url", help="SQLAlchemy or libpq URL (default: OUTBOX_DATABASE_URL)")
        return p

    relay = with_db(sub.add_parser("relay", help="publish this database's outbox to Kafka until SIGTERM"))
    relay.add_argument("--name", default="relay", help="service name, for logs and traces")
    status = with_db(
        sub.add_parser("status", help="pending, oldest pending age, dead rows, consumer groups' lag")
    )
    status.add_argument(
        "--group", dest="groups", action="append", help="consumer group (repeatable); default: the inbox's"
    )
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status.add_argument(
        "--max-age",
        type=float,
        default=300.0,
        help="exit 1 when the oldest pending event waited longer than this many seconds (default 300)",
    )
    status.add_argument(
        "--allow-dead", action="store_true", help="do not exit 1 because of dead-lettered rows"
    )
    health = sub.add_parser("health", help="exit 0 when a relay or consumer loop touched its heartbeat file")
    health.add_argument("--heartbeat-file", required=True, help="the process's OUTBOX_HEARTBEAT_FILE")
    health.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")
    dlq = sub.add_parser("dlq", help="list, show or redrive a consumer group's dead letters (<group>.dlq)")
    dlq.add_argument("action", choices=["list", "show", "redrive"])
    dlq.add_argument("--group", required=True, help="the consumer group whose <group>.dlq to read")
    dlq.add_argument("--id", dest="ids", action="append", help="PARTITION:OFFSET on the dlq (repeatable)")
    dlq.add_argument("--yes", action="store_true", help="redrive: do it (without: list what would go)")
    replay = with_db(
        sub.add_parser("replay", help="publish retained (already published) events again, in order")
    )
    replay.add_argument("--topic")
    replay.add_argument("--type", dest="event_type")
    replay.add_argument("--aggregate-id")
    replay.add_argument("--since", type=datetime.fromisoformat)
    replay.add_argument("--until", type=datetime.fromisoformat)
    replay.add_argument("--yes", action="store_true", help="do it (without: count what would be replayed)")
    replay.add_argument(
        "--allow-partial",
        action="store_true",
        help="with --type: replay only some event types of each aggregate (see PARTIAL_REPLAY)",
    )
    redrive = with_db(sub.add_parser("redrive", help="send dead-lettered rows through the relay again"))
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
    skip = with_db(
        sub.add_parser(
            "skip-gap",
            help="give up the missing version a gap-aware consumer's parked events wait for (its database)",
        )
    )
    skip.add_argument("--consumer", required=True, help="the consumer's name (its group and inbox key)")
    skip.add_argument("--topic", required=True, help="the logical topic (without OUTBOX_TOPIC_PREFIX)")
    skip.add_argument("--aggregate", required=True, help="the aggregate id (the events' subject)")
    skip.add_argument("--yes", action="store_true", help="do it (without: say what would be skipped)")
    explain = with_db(
        sub.add_parser(
            "why",
            help="why an aggregate's events wait (states, the row holding them, locks); where an event went",
        )
    )
    explain.add_argument("target", help="an aggregate id, or an event id (UUID)")
    explain.add_argument("--topic", help="only this topic's rows of the aggregate")
    explain.add_argument(
        "--consumer-db",
        dest="consumer_urls",
        action="append",
        default=[],
        help="a consumer's database: its inbox row, applied version and parked events (repeatable)",
    )
    explain.add_argument("--json", action="store_true")
    view = sub.add_parser("trace", help="print traces from an OTEL_SPANS_FILE as trees, filtered")
    trace_view.add_arguments(view)
    return parser


async def _run_relay(url: str, name: str) -> None:
    from outbox.kafka.connection import KafkaConnection
    from outbox.relay.runner import Relay, RelaySettings
    from outbox.telemetry.metrics import serve_metrics_from_env, setup_metrics
    from outbox.telemetry.tracing import setup_tracing

    setup_tracing(name + "-relay")
    setup_metrics(name + "-relay")
    serve_metrics_from_env()  # OUTBOX_METRICS_PORT: this relay's counters for Prometheus
    relay = Relay(url, RelaySettings.from_env(), name=name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    logging.getLogger("outbox.relay").info(
        "relay %s starting (broker %s, %s)",
        name,
        relay.settings.bootstrap,
        KafkaConnection.from_env().describe(),
    )
    await relay.run()


async def _admin(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from outbox.kafka import bootstrap_from_env
    from outbox.ops import admin, gaps, observe, why

    engine = create_async_engine(psycopg_url(args.database_url))
    try:
        if args.command == "status":
            report = await admin.status(engine)
            report["consumer_groups"] = await observe.consumer_lag_report(
                engine, bootstrap_from_env(), args.groups
            )
            return report
        if args.command == "skip-gap":
            return await gaps.skip_gap(engine, args.consumer, args.topic, args.aggregate, yes=args.yes)
        if args.command == "why":
            return await why.explain(
                engine,
                args.target,
                topic=args.topic,
                consumer_urls=[psycopg_url(u) for u in args.consumer_urls],
            )
        if args.command == "replay":
            selection = admin.Selection(
                topic=args.topic,
                event_type=args.event_type,
                aggregate_id=args.aggregate_id,
                since=args.since,
                until=args.until,
            )
            return await admin.replay(engine, selection, dry_run=not args.yes)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "health":
        age = heartbeat_age(Path(args.heartbeat_file))
        if age is None or age > args.max_age:
            print(f"unhealthy: heartbeat {'missing' if age is None else f'{age:.0f}s old'}", file=sys.stderr)
            return 1
        print(f"healthy: heartbeat {age:.1f}s old")
        return 0
    if args.command == "trace":  # reads a file: none of the imports below
        return trace_view.main(args)
    from aiokafka.errors import KafkaConnectionError

    from outbox.kafka import bootstrap_from_env
    from outbox.kafka.connection import KafkaConnection, KafkaSettingError
    from outbox.ops import dlq, observe, why
    from outbox.telemetry.logs import configure_logging

    configure_logging(f"outbox-{args.command}")
    if args.command in ("relay", "status", "dlq"):
        try:  # settings that cannot work stop the command here, with one line naming the variables
            KafkaConnection.from_env()
        except KafkaSettingError as exc:
            print(f"outbox {args.command}: {exc}", file=sys.stderr)
            return 2
    if args.command == "dlq":
        try:
            result = asyncio.run(
                dlq.run(bootstrap_from_env(), args.action, args.group, args.ids, yes=args.yes)
            )
        except LookupError as exc:
            print(f"outbox dlq: {exc.args[0]}", file=sys.stderr)
            return 1
        except KafkaConnectionError as exc:  # refused or unreachable: the library says which setting
            print(f"outbox dlq: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2, default=str))
        return 0
    try:
        args.database_url = _database_url(args.database_url)
    except SettingError as exc:
        print(f"outbox: {exc}", file=sys.stderr)
        return 2
    if not args.database_url:
        print("outbox: --database-url or OUTBOX_DATABASE_URL is required", file=sys.stderr)
        return 2
    if args.command == "relay":
        asyncio.run(_run_relay(args.database_url, args.name))
        return 0
    if args.command == "replay" and args.event_type and not args.allow_partial:
        print(f"outbox replay: {PARTIAL_REPLAY}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_admin(args))
    except LookupError as exc:  # skip-gap: nothing parked there
        print(f"outbox {args.command}: {exc.args[0]}", file=sys.stderr)
        return 1
    if args.command == "status" and not args.json:
        print(observe.render_status(result))
    elif args.command == "why" and not args.json:
        print(why.render(result))
    else:
        print(json.dumps(result, indent=2, default=str))
    if args.command == "status":
        return status_exit_code(result, max_age=args.max_age, allow_dead=args.allow_dead)
    if args.command == "skip-gap" and not args.yes:
        print("outbox skip-gap: refused without --yes (nothing changed): see would_skip", file=sys.stderr)
        return 1
    if args.command == "redrive" and args.yes and result.get("cannot_reorder"):
        for row in result["cannot_reorder"]:
            print(
                f"outbox redrive: refused row {row['id']} under --reorder: {row['reason']}", file=sys.stderr
            )
        return 1
    if (
        args.command == "redrive"
        and result.get("out_of_order")
        and args.yes
        and not (args.reorder or args.force)
    ):
        print(f"outbox redrive: {OUT_OF_ORDER}", file=sys.stderr)
        return 1
    return 0


def status_exit_code(report: dict[str, Any], *, max_age: float, allow_dead: bool) -> int:
    """0 healthy; 1 when rows are dead-lettered or the oldest pending event waited past `max_age`
    (so `outbox status` works as a check in cron, CI or a healthcheck). Reasons go to stderr."""
    problems = []
    if report.get("dead_lettered") and not allow_dead:
        problems.append(f"{report['dead_lettered']} dead-lettered row(s): see `outbox redrive`")
    if float(report.get("oldest_pending_age_s") or 0) > max_age:
        problems.append(f"oldest pending event waited {report['oldest_pending_age_s']}s (> {max_age:g}s)")
    for problem in problems:
        print(f"outbox status: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
