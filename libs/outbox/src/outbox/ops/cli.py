"""`outbox` command: run a relay, inspect an outbox, replay retained events, redrive dead letters, read topics.

    outbox relay   --database-url URL [--name NAME]
    outbox status  --database-url URL [--group G ...] [--json] [--max-age S] [--max-lag N] [--allow-dead]
                   (exit 1: dead rows, old backlog, a lag past N, broker unreachable)
    outbox health  --heartbeat-file F [--max-age S]   (exit 1: the relay or consumer loop stopped turning)
    outbox dlq     list|show|redrive|ack|purge --group G [--id PARTITION:OFFSET ...] [--all] [--state S] [--yes] [--json]
    outbox replay  --database-url URL [--topic T] [--type T] [--aggregate-id ID] [--since WHEN] [--until WHEN] [--yes] [--json]
    outbox redrive --database-url URL [--id N ...] [--reorder | --force] [--yes] [--json]
    outbox skip-gap --database-url URL --consumer NAME --topic T --aggregate ID [--yes] [--json]   (a consumer's database)
    outbox why     ID | --aggregate ID | --event ID  --database-url URL [--topic T] [--consumer-db URL ...] [--json]
    outbox tail    TOPIC [--from-beginning] [--key K] [--type T] [-n N] [--follow] [--json]
    outbox trace   [SPANS_FILE] [--trace-id ID] [--request-id ID] [--service S] [--name TEXT] [--since WHEN]
                   [--until WHEN] [--idle] [--last N]

WHEN: a duration ago (15m, 2h, 1d, 1h30m) or an ISO timestamp. Output is a table for people; --json for scripts.
Failures print one line naming the fix (exit 2 for a setting, a name or an unreachable database or broker);
--debug prints the traceback, --verbose the library's INFO lines.

The database URL may also come from OUTBOX_DATABASE_URL, its password apart from OUTBOX_DATABASE_PASSWORD
(each also as a file: OUTBOX_DATABASE_URL_FILE, OUTBOX_DATABASE_PASSWORD_FILE); the broker from KAFKA_BOOTSTRAP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from outbox.database_url import psycopg_url
from outbox.env_settings import env_or_file, with_password
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
    from outbox.ops.commands import dlq, rows, tail

    parser = argparse.ArgumentParser(
        prog="outbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Accepted before or after the command: the command's copy is SUPPRESSed when absent, so it does not
    # overwrite a value given before it.
    parser.add_argument("--debug", action="store_true", help="on failure, print the traceback")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="also print the library's INFO log lines"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="on failure, print the traceback"
    )
    common.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also print the library's INFO log lines (default: warnings and errors only)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--database-url", help="SQLAlchemy or libpq URL (default: OUTBOX_DATABASE_URL)")
        return p

    relay = with_db(
        sub.add_parser(
            "relay", help="publish this database's outbox to Kafka until SIGTERM", parents=[common]
        )
    )
    relay.add_argument("--name", default="relay", help="service name, for logs and traces")
    status = with_db(
        sub.add_parser(
            "status",
            help="pending, oldest pending age, dead rows, consumer groups' lag",
            description="Exit status: 0 healthy; 1 dead-lettered rows (unless --allow-dead), the oldest pending "
            "event older than --max-age, a group's lag past --max-lag (or unknown), or the broker unreachable "
            "(one line per reason on stderr); 2 a wrong database URL or Kafka setting.",
            parents=[common],
        )
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
    status.add_argument(
        "--max-lag",
        type=int,
        metavar="N",
        help="exit 1 when a consumer group's lag (records, all its partitions) exceeds N, or is unknown",
    )
    health = sub.add_parser(
        "health", help="exit 0 when a relay or consumer loop touched its heartbeat file", parents=[common]
    )
    health.add_argument("--heartbeat-file", required=True, help="the process's OUTBOX_HEARTBEAT_FILE")
    health.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")
    dlq.add_parser(sub, common)
    rows.add_parsers(sub, common, with_db)
    explain = with_db(
        sub.add_parser(
            "why",
            help="why an aggregate's events wait or are not applied yet (rows, locks, each consumer group); "
            "where an event went",
            description="Exit status: 0 explained; 1 nothing has this id; 2 no id, or --event not a UUID.",
            parents=[common],
        )
    )
    explain.add_argument(
        "target",
        nargs="?",
        metavar="ID",
        help="an aggregate id or an event id: a UUID is looked up as an event id first, then as an aggregate id",
    )
    which = explain.add_mutually_exclusive_group()
    which.add_argument("--aggregate", metavar="ID", help="explain this aggregate (no guessing)")
    which.add_argument("--event", metavar="ID", help="explain this event id (no guessing)")
    explain.add_argument("--topic", help="only this topic's rows of the aggregate")
    explain.add_argument(
        "--consumer-db",
        dest="consumer_urls",
        metavar="URL",
        action="append",
        default=[],
        help="a consumer's database: each group's applied version, lag behind the head, parked events, "
        "the event's inbox row (repeatable)",
    )
    explain.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    tail.add_parser(sub, common)
    view = sub.add_parser(
        "trace", help="print traces from an OTEL_SPANS_FILE as trees, filtered", parents=[common]
    )
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


async def _why(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    from outbox.ops import why

    engine = create_async_engine(psycopg_url(args.database_url))
    try:
        return await why.explain(
            engine,
            args.aggregate or args.event or args.target,
            kind="aggregate" if args.aggregate else "event" if args.event else "auto",
            topic=args.topic,
            consumer_urls=[psycopg_url(u) for u in args.consumer_urls],
        )
    finally:
        await engine.dispose()


DB_COMMANDS = ("relay", "status", "replay", "redrive", "skip-gap", "why")
BROKER_COMMANDS = ("relay", "status", "dlq", "tail")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "health":
        age = heartbeat_age(Path(args.heartbeat_file))
        if age is None or age > args.max_age:
            print(f"unhealthy: heartbeat {'missing' if age is None else f'{age:.0f}s old'}", file=sys.stderr)
            return 1
        print(f"healthy: heartbeat {age:.1f}s old")
        return 0
    from outbox.ops.commands.errors import explain
    from outbox.telemetry.logs import configure_logging

    # One-shot commands print their answer; the library's INFO lines (topics created, clients started)
    # would only bury it. A relay runs as a service and logs at LOG_LEVEL.
    quiet = args.command != "relay" and not args.verbose
    configure_logging(f"outbox-{args.command}", level="WARNING" if quiet else None)
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `outbox dlq list | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except Exception as exc:
        if args.debug:
            raise
        code, message = explain(exc, args)
        print(f"outbox {args.command}: {message}", file=sys.stderr)
        return code


def _run(args: argparse.Namespace) -> int:
    from outbox.kafka.connection import KafkaConnection
    from outbox.ops.commands import dlq, rows, tail

    if args.command in BROKER_COMMANDS:
        KafkaConnection.from_env()  # settings that cannot work stop here, with one line naming the variables
    if args.command == "trace":
        return trace_view.main(args)
    if args.command == "dlq":
        return dlq.run(args)
    if args.command == "tail":
        return tail.run(args)
    args.database_url = _database_url(args.database_url)
    if not args.database_url:
        print(f"outbox {args.command}: --database-url or OUTBOX_DATABASE_URL is required", file=sys.stderr)
        return 2
    if args.command == "relay":
        asyncio.run(_run_relay(args.database_url, args.name))
        return 0
    if args.command in ("replay", "redrive", "skip-gap"):
        return rows.run(args)
    if args.command == "status":
        return _status(args)
    return _why_command(args)


def _status(args: argparse.Namespace) -> int:
    """`outbox status`: psycopg and aiokafka only (`ops/status.py`), so it answers in well under a second."""
    from outbox.kafka import bootstrap_from_env
    from outbox.ops import status

    result = asyncio.run(status.report(args.database_url, args.groups, bootstrap_from_env()))
    print(json.dumps(result, indent=2, default=str) if args.json else status.render(result))
    return status_exit_code(result, max_age=args.max_age, allow_dead=args.allow_dead, max_lag=args.max_lag)


def _why_command(args: argparse.Namespace) -> int:
    from outbox.ops.errors import OperatorError
    from outbox.ops.why import as_event_id, render

    given = [v for v in (args.target, args.aggregate, args.event) if v]
    if len(given) != 1:
        raise OperatorError("give one id: ID (guessed), --aggregate ID or --event ID")
    if args.event and as_event_id(args.event) is None:
        raise OperatorError(
            f"--event {args.event!r} is not an event id (a UUID); an aggregate id goes with --aggregate"
        )
    result = asyncio.run(_why(args))
    print(json.dumps(result, indent=2, default=str) if args.json else render(result))
    if result["matched"] == "nothing":
        print(f"outbox why: {result['next']}", file=sys.stderr)
        return 1
    return 0


def status_exit_code(
    report: dict[str, Any], *, max_age: float, allow_dead: bool, max_lag: int | None = None
) -> int:
    """0 healthy; 1 when rows are dead-lettered, the oldest pending event waited past `max_age`, a group's
    lag exceeds `max_lag` (or cannot be read while it is given), or the broker cannot be reached (so
    `outbox status` works as a check in cron, CI or a healthcheck). One line per reason on stderr."""
    problems = []
    if report.get("dead_lettered") and not allow_dead:
        problems.append(f"{report['dead_lettered']} dead-lettered row(s): see `outbox redrive`")
    if float(report.get("oldest_pending_age_s") or 0) > max_age:
        problems.append(f"oldest pending event waited {report['oldest_pending_age_s']}s (> {max_age:g}s)")
    if report.get("broker_error"):
        problems.append(f"consumer groups' lag unknown: {report['broker_error']}")
    elif max_lag is not None:
        for group, lag in (report.get("consumer_groups") or {}).items():
            if lag.get("lag") is None:
                problems.append(f"group {group}: lag unknown ({lag.get('error')})")
            elif lag["lag"] > max_lag:
                problems.append(
                    f"group {group}: lag {lag['lag']} > {max_lag}: is its consumer running? "
                    f"`outbox why ID --consumer-db URL` for one document"
                )
    for problem in problems:
        print(f"outbox status: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
