"""What an operator did with each dead letter: redriven, acknowledged, purged. Kept on `<group>.dlq.acks`.

Kafka cannot delete one record of a topic, and DeleteRecords (cut a partition's log up to an offset) only
helps once every record before the cut is handled, needs the Delete ACL on the dead-letter topic, and is not
implemented by every broker (Tansu closes the connection). So the dead-letter topic is left as it is (its
records expire with its retention, the evidence stays until then) and each operator action writes a mark
to a small companion topic: one record per dead letter, keyed by its `partition:offset`, the value carrying
the whole of what was done with it (JSON). The companion topic is compacted (`cleanup.policy=compact`, one
partition): the broker keeps the latest mark of each dead letter, so the marks survive restarts at the cost
of a few bytes per dead letter. Readers take the latest mark per key; a mark names the dead letter's event
id and is ignored when it does not match (a dead-letter topic deleted and created again reuses offsets).

A purged dead letter is hidden from `outbox dlq list` (shown with `--all`); only redriven or acknowledged
ones can be purged. Writing marks needs Write (and, once, Create) on `<group>.dlq.acks`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from outbox.kafka import replication_factor, start_producer
from outbox.kafka.clients import KafkaAdmin
from outbox.ops.topic_reader import Record

MARKS_SUFFIX = ".acks"
STATES = ("dead", "redriven", "acked", "purged")  # in the order an entry goes through them


def marks_topic(dead_letter_topic: str) -> str:
    return dead_letter_topic + MARKS_SUFFIX


@dataclass(frozen=True, slots=True)
class Mark:
    event_id: str | None = None
    redriven: int = 0  # how many times
    redriven_at: str | None = None  # the last time
    acked_at: str | None = None
    purged_at: str | None = None
    by: str | None = None  # user@host of the last action

    @property
    def state(self) -> str:
        if self.purged_at:
            return "purged"
        if self.acked_at:
            return "acked"
        return "redriven" if self.redriven_at else "dead"

    def did(self, action: str) -> Mark:
        now, by = datetime.now(UTC).isoformat(timespec="seconds"), _who()
        if action == "redriven":
            return replace(self, redriven=self.redriven + 1, redriven_at=now, by=by)
        if action == "acked":
            return replace(self, acked_at=now, by=by)
        if action == "purged":
            return replace(self, purged_at=now, by=by)
        raise ValueError(action)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> Mark | None:
        try:
            raw = json.loads(value or b"")
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "?"
    return f"{user}@{socket.gethostname()}"


def latest_marks(records: Iterable[Record]) -> dict[str, Mark]:
    """The latest mark per dead-letter id (records in offset order: the single partition's)."""
    marks: dict[str, Mark] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        mark = Mark.decode(record.value)
        if record.key and mark is not None:
            marks[record.key.decode(errors="replace")] = mark
    return marks


async def write_marks(bootstrap: str, topic: str, marks: Mapping[str, Mark]) -> None:
    """Publish each mark (acks=all, waited for); creates the compacted topic on first use."""
    if not marks:
        return
    await _ensure_marks_topic(bootstrap, topic)
    producer = await start_producer(bootstrap, idempotent=False)  # a duplicate mark changes nothing
    try:
        futures = [await producer.send(topic, key=k.encode(), value=m.encode()) for k, m in marks.items()]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _ensure_marks_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdmin(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        if topic in set(await admin.list_topics()):
            return
        replication = await replication_factor(admin)
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(topic, 1, replication, topic_configs={"cleanup.policy": "compact"})]
            )
    finally:
        await admin.close()
