"""The relay's settings (from the environment with `RelaySettings.from_env()`) and its counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from outbox.env_settings import from_env
from outbox.kafka import bootstrap_from_env, topic_prefix
from outbox.writer import DEFAULT_NOTIFY_CHANNEL


@dataclass(frozen=True, slots=True)
class RelaySettings:
    bootstrap: str = field(default_factory=bootstrap_from_env)
    topic_prefix: str = field(default_factory=topic_prefix)
    batch_size: int = 1000
    # Under a backlog, claim the next batch while this one is sent, and send it while this one commits
    # (`relay.pipeline`: same order and delivery guarantees, up to three transactions open instead of one).
    claim_ahead: bool = True
    # Several relays on one outbox split its aggregates into this many shares, each relay publishing its
    # own (`relay.shares`: advisory locks, rebalanced every `share_rebalance_s`); 0: every relay claims from
    # every aggregate (order still holds, but relays hold each other's aggregates back).
    shares: int = 64
    share_rebalance_s: float = 1.0
    # Non-retriable publish failures of one row before it is dead-lettered (kept in the table, dead_at set).
    max_attempts: int = 5
    # A dead-lettered row holds its aggregate's later rows back until it is redriven (strict order, at the
    # price of that aggregate's availability); off: the later rows go on and the dead row is a gap.
    block_on_dead: bool = False
    row_backoff_initial_s: float = 0.5
    row_backoff_max_s: float = 60.0
    idle_poll_min_s: float = 0.001
    # After a short claim, wait this long past the next wake-up before claiming: the commits of that time
    # go in one claim (fewer, larger transactions; CPU per event falls) for up to this much latency. Under a
    # backlog (full claims) it never waits. 0: claim at once.
    claim_linger_ms: int = 0
    idle_poll_max_s: float = 0.5
    notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL
    retention: timedelta = timedelta(days=7)
    # Dead-lettered rows stay for inspection and redrive this long, then go.
    dead_retention: timedelta = timedelta(days=30)
    # The head of an aggregate with nothing pending or dead and no write for this long goes (its next event
    # then names no previous version). Keep it above the consumers' lag and the published retention.
    heads_retention: timedelta = timedelta(days=30)
    cleanup_interval_s: float = 60.0
    cleanup_batch: int = 5000
    # How often the relay checks whether the outbox's planner figures are stale (and ANALYZEs it if so).
    analyze_interval_s: float = 1.0
    outage_backoff_max_s: float = 5.0
    max_message_bytes: int = 1_048_576
    # One record batch per partition lane holds up to this many bytes (below the broker's max.message.bytes).
    batch_bytes: int = 262_144
    # The broker must acknowledge a claim's batches within this; past it the acked rows are marked, the rest
    # stay pending, and the transaction ends (a hung broker never holds row locks or vacuum back for long).
    ack_timeout_s: float = 30.0
    # 0: send at once; a batch still goes out together because sends queue while the previous is in flight.
    linger_ms: int = 0
    compression: str | None = None

    @classmethod
    def from_env(cls) -> RelaySettings:
        """Every field from `OUTBOX_RELAY_<FIELD>`, or the shared name in `RELAY_ENV`; defaults above."""
        return from_env(cls, "OUTBOX_RELAY_", RELAY_ENV)


# Names shared with other parts of the library (the writer, the CLI) or kept from earlier releases.
RELAY_ENV = {
    "bootstrap": "KAFKA_BOOTSTRAP",
    "topic_prefix": "OUTBOX_TOPIC_PREFIX",
    "notify_channel": "OUTBOX_NOTIFY_CHANNEL",
    "retention": "OUTBOX_RETENTION_HOURS",
    "dead_retention": "OUTBOX_DEAD_RETENTION_HOURS",
    "heads_retention": "OUTBOX_HEADS_RETENTION_HOURS",
    "cleanup_interval_s": "OUTBOX_CLEANUP_INTERVAL_S",
    "cleanup_batch": "OUTBOX_CLEANUP_BATCH",
    "max_message_bytes": "OUTBOX_MAX_MESSAGE_BYTES",
    "compression": "OUTBOX_COMPRESSION",
}


@dataclass(slots=True)
class RelayStats:
    batches: int = 0
    published: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    outages: int = 0
    cleaned: int = 0
    producer_resets: int = 0
    claimed_ahead: int = 0  # batches claimed while the previous one was still on its way
    moved_behind: int = 0  # rows moved behind a later-ready pending row of their aggregate (`OutboxStore`)
