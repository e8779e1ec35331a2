"""Liveness of relay and consumer processes, for healthchecks that can only run a command.

A process given `OUTBOX_HEARTBEAT_FILE` touches that file from its main loop (at most once a second), so a
fresh file means the loop is turning, not merely that the process exists. `outbox health --heartbeat-file
F --max-age S` exits 0 when F was touched within S seconds, 1 otherwise: a compose or Kubernetes exec probe.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HEARTBEAT_ENV = "OUTBOX_HEARTBEAT_FILE"


class Heartbeat:
    def __init__(self, path: str | None, *, every_seconds: float = 1.0) -> None:
        self.path = Path(path) if path else None
        self.every = every_seconds
        self._last = 0.0

    @classmethod
    def from_env(cls) -> Heartbeat:
        return cls(os.environ.get(HEARTBEAT_ENV) or None)

    def beat(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self.path.touch()
            self._last = now


def heartbeat_age(path: Path) -> float | None:
    """Seconds since the file was last touched, None when it does not exist."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None
