"""Failures as one line naming the fix (`outbox CMD: ...` on stderr), instead of a traceback.

Exit 2: the operator can fix it (a setting, a name, a URL, an unreachable database or broker); exit 1: a
refusal the command explains (nothing parked, no such dead letter) or an unexpected error, which `--debug`
shows with its traceback.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from outbox.env_settings import SettingError
from outbox.ops.errors import OperatorError

DB_HINT = "check --database-url or OUTBOX_DATABASE_URL"


def _one_line(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _safe_url(url: str | None) -> str:
    if not url:
        return "(no URL)"
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:  # not even a URL: say so without echoing a possible password
        return "(unparsable URL)"


def explain(exc: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """(exit code, one line) for a failure of the command `args` describes."""
    if isinstance(exc, OperatorError):
        return exc.exit_code, _one_line(exc)
    if isinstance(exc, SettingError | argparse.ArgumentTypeError):
        return 2, _one_line(exc)
    if isinstance(exc, FileNotFoundError):
        return 2, f"no such file: {exc.filename or exc}"
    if isinstance(exc, PermissionError | IsADirectoryError):
        return 2, f"cannot read {exc.filename or ''}: {exc.strerror or exc}"
    explained = _database(exc, getattr(args, "database_url", None)) or _broker(exc)
    if explained:
        return explained
    if isinstance(exc, LookupError):
        return 1, _one_line(exc.args[0] if exc.args else exc)
    if isinstance(exc, TimeoutError):
        return 1, f"timed out: {_one_line(exc) or 'no answer in time'}"
    return 1, f"unexpected {type(exc).__name__}: {_one_line(exc)} (--debug shows the traceback)"


def _database(exc: BaseException, url: str | None) -> tuple[int, str] | None:
    from sqlalchemy import exc as sa

    where = _safe_url(url)
    if isinstance(exc, sa.NoSuchModuleError):
        return 2, f"{where} is not a PostgreSQL URL ({DB_HINT}: postgresql://USER@HOST:PORT/DATABASE)"
    if isinstance(exc, sa.ArgumentError):
        return 2, f"not a database URL: {_one_line(exc)} ({DB_HINT}: postgresql://USER@HOST:PORT/DATABASE)"
    if not isinstance(exc, sa.DBAPIError):
        return None
    lines = [x.strip() for x in str(exc.orig if exc.orig is not None else exc).splitlines() if x.strip()]
    if isinstance(exc, sa.ProgrammingError):
        lines = lines[:1]  # the statement and its caret follow
    message = _one_line("; ".join(lines))
    if isinstance(exc, sa.OperationalError | sa.InterfaceError) and (
        "connection" in message or "connect" in message
    ):
        message = message.removeprefix("connection failed: ")
        return 2, f"cannot connect to the database {where}: {message} ({DB_HINT})"
    if isinstance(exc, sa.ProgrammingError) and "does not exist" in message:
        return 2, (
            f"{message} in {where}: not an outbox database, or not migrated "
            f"({DB_HINT}; skip-gap takes the consumer's database)"
        )
    return 2, f"database {where}: {message}"


def _broker(exc: BaseException) -> tuple[int, str] | None:
    from aiokafka.errors import KafkaConnectionError, KafkaError

    if not isinstance(exc, KafkaError):
        return None
    # aiokafka's str() starts with the class name (and an error number for broker answers)
    text = re.sub(rf"^(\[Error -?\d+\] )?{type(exc).__name__}: ", "", _one_line(exc))
    if isinstance(exc, KafkaConnectionError):  # the library's clients name the setting (kafka/clients.py)
        return 2, text if "KAFKA_" in text else f"{text} (check KAFKA_BOOTSTRAP and the KAFKA_* settings)"
    return 2, f"broker error {type(exc).__name__}: {text} (KAFKA_BOOTSTRAP)"
