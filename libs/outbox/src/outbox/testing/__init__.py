"""Test helpers for code built on the outbox.

- `HandlerHarness`: a consumer's handlers through its real apply pipeline (guard, parking, outcomes,
  dead-lettering) with in-memory stores: no broker, no PostgreSQL, milliseconds per test.
- `read_topic`, `wire`, `headers_of`, `drain_outbox`, `EFFECTS_DDL`, `record_effect(s)`: for tests against
  the real broker and PostgreSQL.
"""

from __future__ import annotations

from outbox.testing.harness import HandlerHarness
from outbox.testing.infra import (
    EFFECTS_DDL,
    drain_outbox,
    headers_of,
    read_topic,
    record_effect,
    record_effects,
    wire,
)
from outbox.testing.memory import (
    DeadLetter,
    MemoryDeadLetters,
    MemoryInbox,
    MemoryOutbox,
    MemorySession,
    MemoryState,
    NoDatabase,
)

__all__ = [
    "EFFECTS_DDL",
    "DeadLetter",
    "HandlerHarness",
    "MemoryDeadLetters",
    "MemoryInbox",
    "MemoryOutbox",
    "MemorySession",
    "MemoryState",
    "NoDatabase",
    "drain_outbox",
    "headers_of",
    "read_topic",
    "record_effect",
    "record_effects",
    "wire",
]
