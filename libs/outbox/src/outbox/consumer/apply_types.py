"""What the apply pipeline and its parked-release loops pass around: a decoded record, the counts, a
handler's failure, the retry policy."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from aiokafka import ConsumerRecord
from tenacity import RetryCallState
from tenacity.stop import stop_base

from outbox.consumer.handlers import Reject, Route
from outbox.envelope import ReceivedEvent


@dataclass(slots=True)
class ConsumerStats:
    applied: int = 0
    duplicates: int = 0
    stale: int = 0
    ignored: int = 0
    dead_lettered: int = 0
    retries: int = 0
    batch_failures: int = 0
    parked: int = 0  # arrived before the version they follow (gap-aware handlers)
    released: int = 0  # parked events applied once their gap closed
    gap_expired: int = 0  # parked events dead-lettered after waiting past the park retention

    def merge(self, other: ConsumerStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True, slots=True)
class Parsed:
    """A delivered record, decoded: its event (None: malformed), its handler, what is wrong with it."""

    record: ConsumerRecord[bytes, bytes]
    event: ReceivedEvent | None
    route: Route | None
    problem: str | None  # set: dead-letter this record with this reason
    redriven: bool = False  # an operator's redrive from the dead-letter topic: a new attempt
    payload: Any = None  # the handler's payload (validated by its `payload=` model), set by the consumer


class HandlerFailed(Exception):
    """A handler raised; `cause` is what it raised."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    initial_s: float
    max_s: float


class DatabaseLost(Exception):
    """The connection itself failed: retrying inside this transaction cannot help."""


class PastDeadline(stop_base):
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() >= self.deadline


def worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseLost):
        return False
    return not (isinstance(exc, HandlerFailed) and isinstance(exc.cause, Reject))
