"""Finished spans as JSON lines in a file (`OTEL_SPANS_FILE`): the local, backend-free view that
`outbox trace` renders. Imported only when that variable is set (it needs the OpenTelemetry SDK).

The file is size-capped: a write that would take it past `OTEL_SPANS_FILE_MAX_BYTES` (10 MB; 0: no cap)
first renames it to `FILE.1` (`FILE.1` to `FILE.2`, ... up to `OTEL_SPANS_FILE_BACKUPS`, 3; the oldest is
dropped), so the set never holds more than (backups + 1) x max bytes. Every process of `make run` writes
the same file: each write (and rotation) happens under an exclusive lock on `FILE.lock`, so a rotation
never splits a line or loses another process's write. Both files stay open between writes (an export
is a lock, a stat and a write); a process sees another's rotation when the name no longer names the file it
holds, and reopens. `trace_view.span_files` lists the set, oldest first.
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


def env_int(name: str, default: int) -> int:
    """A whole number of 0 or more from the environment (`default` when unset); a clear error otherwise."""
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
            env_int("OTEL_SPANS_FILE_MAX_BYTES", DEFAULT_MAX_BYTES) if max_bytes is None else max_bytes
        )
        self._backups = env_int("OTEL_SPANS_FILE_BACKUPS", DEFAULT_BACKUPS) if backups is None else backups
        self._lock = threading.Lock()
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._fd: int | None = None  # the spans file and its lock file, opened at the first export
        self._lock_fd: int | None = None
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
        with self._lock:
            lock_fd = self._held(self._lock_path, "_lock_fd")
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                fd = self._held(self._path, "_fd")
                if self._max_bytes and self._rotate_if_full(os.fstat(fd).st_size, len(data)):
                    fd = self._held(self._path, "_fd")
                view = memoryview(data)
                while view:  # O_APPEND: each write lands at the end, whoever wrote before
                    view = view[os.write(fd, view) :]
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        return SpanExportResult.SUCCESS

    def _held(self, path: Path, attr: str) -> int:
        """The descriptor kept open on `path` (one open per process, not per export), reopened when the name
        now points at another file: another process rotated it (or someone removed it) since we opened it.
        Called under the lock, where no rotation happens."""
        fd: int | None = getattr(self, attr)
        if fd is not None:
            try:
                if os.path.samestat(os.stat(path), os.fstat(fd)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        setattr(self, attr, fd)
        return fd

    def _rotate_if_full(self, size: int, adding: int) -> bool:
        """Rotate when `adding` bytes would take the file (now `size` bytes) past the cap; True if rotated."""
        if size == 0 or size + adding <= self._max_bytes:
            return False
        if self._backups == 0:
            self._path.unlink()
            return True
        for n in range(self._backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{n}")
            if older.exists():
                older.replace(self._path.with_name(f"{self._path.name}.{n + 1}"))
        self._path.replace(self._path.with_name(f"{self._path.name}.1"))
        return True

    def shutdown(self) -> None:
        with self._lock:
            for attr in ("_fd", "_lock_fd"):
                fd = getattr(self, attr)
                if fd is not None:
                    setattr(self, attr, None)
                    os.close(fd)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
