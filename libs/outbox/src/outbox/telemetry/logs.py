"""Process logging, set up in one place for every process (APIs, relays, consumers, CLI).

`LOG_LEVEL` (INFO) sets the level. `LOG_FORMAT=json` writes one JSON object per line (python-json-logger,
the `json` extra) with `trace_id` and `span_id` of the current span, so a log line leads to its trace;
otherwise plain text, which carries the ids too when a span is active.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_suffix)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s %(span_id)s"


class ExplainedBootstrapFilter(logging.Filter):
    """Drops aiokafka's lines about a failed bootstrap connection (logged only while a client starts): the
    library's clients raise an error naming the cause and the setting to fix instead (kafka_clients.py),
    and a process retrying with backoff should log one line a try, not three. A running client that loses
    a broker retries every 100 ms and logs each try: the same line is let through once a minute."""

    MESSAGES = ('Unable connect to "%s:%s": %s', 'Unable to request metadata from "%s:%s": %s')
    REPEATED = ("Unable connect to node with id %s: %s",)
    EVERY_S = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.MESSAGES:
            return False
        if record.msg in self.REPEATED:
            line, now = record.getMessage(), time.monotonic()
            if now - self._last.get(line, -self.EVERY_S) < self.EVERY_S:
                return False
            self._last[line] = now
        return True


class TraceContextFilter(logging.Filter):
    """Adds the current span's ids to every record (empty outside a span)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        trace_id = f"{ctx.trace_id:032x}" if ctx.is_valid else ""
        span_id = f"{ctx.span_id:016x}" if ctx.is_valid else ""
        record.__dict__.update(
            trace_id=trace_id,
            span_id=span_id,
            trace_suffix=f" trace_id={trace_id} span_id={span_id}" if ctx.is_valid else "",
        )
        return True


def configure_logging(service: str, *, level: str | None = None) -> None:
    """Replace the root handlers with one stream handler in the configured format. Idempotent."""
    fmt = os.environ.get("LOG_FORMAT", "text").lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    if fmt == "json":
        try:
            from pythonjsonlogger.core import RESERVED_ATTRS
            from pythonjsonlogger.json import JsonFormatter
        except ImportError as exc:
            raise RuntimeError(
                "LOG_FORMAT=json needs python-json-logger: pip install 'kafka-txoutbox[json]'"
            ) from exc
        handler.setFormatter(
            JsonFormatter(
                JSON_FIELDS,
                rename_fields={"levelname": "level", "name": "logger"},
                static_fields={"service": service},
                # a record's extras become fields (servicekit's access log: request_id, status, ...);
                # the text format's trace suffix is not one of them
                reserved_attrs=[*RESERVED_ATTRS, "trace_suffix", "taskName", "color_message"],
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("LOG_LEVEL", "INFO")).upper())
    aiokafka = logging.getLogger("aiokafka")
    if not any(isinstance(f, ExplainedBootstrapFilter) for f in aiokafka.filters):
        aiokafka.addFilter(ExplainedBootstrapFilter())
