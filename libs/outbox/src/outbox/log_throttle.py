"""Outage lines at most once per interval: a relay or consumer waiting on a broker or database that is down
retries every few seconds, and a line per retry buries everything else in the log."""

from __future__ import annotations

import logging
import time

DEFAULT_INTERVAL_S = 30.0


class LogThrottle:
    """One line per `key` per `interval_s`; the next line that goes out says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log `message % args` unless `key` was logged less than `interval_s` ago; True when it went out."""
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            message += " (%d similar line(s) in the last %.0fs not shown)"
            args = (*args, held, self.interval_s)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True

    def recovered(self, key: str, message: str, *args: object) -> None:
        """The condition behind `key` ended: say so once (if it was ever logged) and start afresh."""
        if self._last.pop(key, None) is not None:
            self._held.pop(key, None)
            self.logger.info(message, *args)
