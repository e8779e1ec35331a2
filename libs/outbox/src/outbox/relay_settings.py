"""The relay's settings (from the environment with `RelaySettings.from_env()`) and its counters."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

from outbox.kafka import bootstrap_from_env, topic_prefix
from outbox.writer import DEFAULT_NOTIFY_CHANNEL


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    bootstrap: str = field(default_factory=bootstrap_from_env)
    topic_prefix: str = field(default_factory=topic_prefix)
    batch_size: int = 1000
    # Non-retriable publish failures of one row before it is dead-lettered (kept in the table, dead_at set).
    max_attempts: int = 5
    # A dead-lettered row holds its aggregate's later rows back until it is redriven (strict order, at the
    # price of that aggregate's availability); off: the later rows go on and the dead row is a gap.
    block_on_dead: bool = False
    row_backoff_initial_s: float = 0.5
    row_backoff_max_s: float = 60.0
    idle_poll_min_s: float = 0.001
    idle_poll_max_s: float = 0.5
    notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL
    retention: timedelta = timedelta(days=7)
    # Dead-lettered rows stay for inspection and redrive this long, then go.
    dead_retention: timedelta = timedelta(days=30)
    cleanup_interval_s: float = 60.0
    cleanup_batch: int = 5000
    analyze_interval_s: float = 30.0
    outage_backoff_max_s: float = 5.0
    max_message_bytes: int = 1_048_576
    # One record batch per partition lane holds up to this many bytes (below the broker's max.message.bytes).
    batch_bytes: int = 262_144
    # The broker must acknowledge a claim's batches within this; past it the acked rows are marked, the rest
    # stay pending, and the transaction ends (a hung broker never holds row locks or vacuum back for long).
    ack_timeout_s: float = 30.0
    # 0: send at once; a batch still goes out together because sends queue while the previous is in flight.
    linger_ms: int = 0
    # Claim loops in this process, each over its own share of the aggregates (a hash of the id): while one
    # waits for the broker's acks or its commit, another claims and sends, so the relay's and PostgreSQL's
    # work overlap instead of taking turns. Order per aggregate is untouched (an aggregate has one lane).
    claim_lanes: int = 2
    compression: str | None = None

    @classmethod
    def from_env(cls) -> RelaySettings:
        channel = _env("OUTBOX_NOTIFY_CHANNEL", DEFAULT_NOTIFY_CHANNEL)
        return cls(
            batch_size=int(_env("OUTBOX_RELAY_BATCH_SIZE", "1000")),
            max_attempts=int(_env("OUTBOX_RELAY_MAX_ATTEMPTS", "5")),
            block_on_dead=_env("OUTBOX_RELAY_BLOCK_ON_DEAD", "false").lower() in ("1", "true", "yes"),
            idle_poll_max_s=float(_env("OUTBOX_RELAY_IDLE_POLL_MAX_S", "0.5")),
            notify_channel=channel or None,
            retention=timedelta(hours=float(_env("OUTBOX_RETENTION_HOURS", str(7 * 24)))),
            dead_retention=timedelta(hours=float(_env("OUTBOX_DEAD_RETENTION_HOURS", str(30 * 24)))),
            ack_timeout_s=float(_env("OUTBOX_RELAY_ACK_TIMEOUT_S", "30")),
            batch_bytes=int(_env("OUTBOX_RELAY_BATCH_BYTES", "262144")),
            cleanup_interval_s=float(_env("OUTBOX_CLEANUP_INTERVAL_S", "60")),
            max_message_bytes=int(_env("OUTBOX_MAX_MESSAGE_BYTES", "1048576")),
            compression=_env("OUTBOX_COMPRESSION", "") or None,
            linger_ms=int(_env("OUTBOX_RELAY_LINGER_MS", "0")),
            claim_lanes=max(1, int(_env("OUTBOX_RELAY_CLAIM_LANES", "2"))),
        )


@dataclass(slots=True)
class RelayStats:
    batches: int = 0
    published: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    outages: int = 0
    cleaned: int = 0
    producer_resets: int = 0
