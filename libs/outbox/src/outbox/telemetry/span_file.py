"""Finished spans as JSON lines in a file (`OTEL_SPANS_FILE`): the local, backend-free view that
`outbox trace` renders. Imported only when that variable is set (it needs the OpenTelemetry SDK).

The file is size-capped: a write that would take it past `OTEL_SPANS_FILE_MAX_BYTES` (10 MB; 0: no cap)
first renames it to `FILE.1` (`FILE.1` to `FILE.2`, ... up to `OTEL_SPANS_FILE_BACKUPS`, 3; the oldest is
dropped), so the set never holds more than (backups + 1) x max bytes. Every process of `make run` writes
the same file: each write (and rotation) happens under an exclusive lock on `FILE.lock`, so a rotation
never splits a line or loses another process's write. `trace_view.span_files` lists the set, oldest first.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

DEFAULT_MAX_BYTES = 10_000_000
DEFAULT_BACKUPS = 3


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a whole number") from exc
    if value < 0:
        raise ValueError(f"{name}={raw!r} must be 0 or more")
    return value


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans as one JSON object per line; several processes may share the file."""

    def __init__(self, path: str, *, max_bytes: int | None = None, backups: int | None = None) -> None:
        self._path = Path(path)
        self._max_bytes = (
            _env_int("OTEL_SPANS_FILE_MAX_BYTES", DEFAULT_MAX_BYTES) if max_bytes is None else max_bytes
        )
        self._backups = _env_int("OTEL_SPANS_FILE_BACKUPS", DEFAULT_BACKUPS) if backups is None else backups
        self._lock = threading.Lock()
        self._path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            assert ctx is not None
            lines.append(
                json.dumps(
                    {
                        "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "name": span.name,
                        "service": span.resource.attributes.get("service.name"),
                        "kind": span.kind.name,
                        "start": span.start_time,
                        "end": span.end_time,
                        "status": span.status.status_code.name,
                        "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
                    }
                )
            )
        data = "".join(line + "\n" for line in lines).encode()
        lock_path = self._path.with_name(self._path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self._max_bytes:
                self._rotate_if_full(len(data))
            with open(self._path, "ab") as fh:
                fh.write(data)
        return SpanExportResult.SUCCESS

    def _rotate_if_full(self, adding: int) -> None:
        try:
            size = self._path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + adding <= self._max_bytes:
            return
        if self._backups == 0:
            self._path.unlink()
            return
        for n in range(self._backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{n}")
            if older.exists():
                older.replace(self._path.with_name(f"{self._path.name}.{n + 1}"))
        self._path.replace(self._path.with_name(f"{self._path.name}.1"))

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
