"""The consumer's settings (from the environment with `ConsumerSettings.from_env()`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from outbox.env_settings import from_env
from outbox.kafka import bootstrap_from_env, topic_prefix


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    bootstrap: str = field(default_factory=bootstrap_from_env)
    topic_prefix: str = field(default_factory=topic_prefix)
    max_attempts: int = 5
    retry_initial_s: float = 0.05
    retry_max_s: float = 2.0
    max_batch: int = 500
    poll_timeout_ms: int = 200
    # How long the broker may hold an empty fetch. Some brokers answer a held fetch only when it expires,
    # not when data arrives, so this bounds delivery latency; lower costs idle CPU (one fetch per wait).
    fetch_max_wait_ms: int = 5
    # After a fetch of fewer than `max_batch` records, wait this long and take what arrived meanwhile into
    # the same transaction: at a steady trickle, fewer and larger transactions (CPU per event falls with the
    # batch size) for up to this much latency. 0 applies what a fetch brings at once.
    batch_linger_ms: int = 0
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    # Must exceed half the session timeout: some brokers hold JoinGroup that long.
    request_timeout_ms: int = 20_000
    # How long to wait before retrying a batch whose transaction failed (database down, say).
    outage_backoff_max_s: float = 5.0
    # After a handler failure the batch is replayed one savepoint per event. Past 64 subtransactions in one
    # transaction PostgreSQL's subtransaction cache overflows and every session's snapshots slow down, so
    # the careful path commits every `careful_chunk` events. Releasing parked events (a savepoint per round
    # of up to `max_batch`) takes as many rounds per transaction.
    careful_chunk: int = 50
    # Retries of the careful path stop after this long per batch (the remaining failures are dead-lettered
    # after one attempt): well inside the broker's max poll interval (300 s), so no rebalance mid-batch.
    careful_budget_s: float = 60.0
    # Inbox rows are pruned after this; keep it longer than any topic's retention (replays from Kafka).
    inbox_retention: timedelta = timedelta(days=30)
    inbox_prune_interval_s: float = 600.0
    # Gap-aware handlers park events that arrived before the version they follow; a sweep applies those
    # whose gap another member closed, and warns about any parked longer than `park_alert_after_s`.
    park_sweep_interval_s: float = 5.0
    park_alert_after_s: float = 60.0
    # A parked event whose gap has not closed after this long goes to the dead-letter topic (an error names
    # `outbox why` and `outbox skip-gap`): nothing waits for ever. Its aggregate's gap stays open: later
    # events park behind it until the missing version arrives or an operator skips it.
    park_retention: timedelta = timedelta(days=7)
    # Version rows the guard has not moved for this long are pruned (run with the inbox pruning; never below
    # `inbox_retention`, never while events are parked behind one). A later event of such an aggregate finds
    # no baseline: it is applied, as for an aggregate never seen.
    version_retention: timedelta = timedelta(days=30)

    @classmethod
    def from_env(cls) -> ConsumerSettings:
        """Every field from `OUTBOX_CONSUMER_<FIELD>`, or the shared name in `CONSUMER_ENV`."""
        return from_env(cls, "OUTBOX_CONSUMER_", CONSUMER_ENV)


CONSUMER_ENV = {
    "bootstrap": "KAFKA_BOOTSTRAP",
    "topic_prefix": "OUTBOX_TOPIC_PREFIX",
    "inbox_retention": "OUTBOX_INBOX_RETENTION_HOURS",
    "park_alert_after_s": "OUTBOX_CONSUMER_PARK_ALERT_S",
    "park_retention": "OUTBOX_CONSUMER_PARK_RETENTION_HOURS",
    "version_retention": "OUTBOX_CONSUMER_VERSION_RETENTION_HOURS",
}
