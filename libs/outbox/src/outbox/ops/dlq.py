"""Consumer dead letters: list, show, redrive, acknowledge and purge the records on `<group>.dlq`.

A dead letter keeps the original key, value and headers plus `dlq_reason`, `dlq_consumer`,
`dlq_original_topic/partition/offset`, `dlq_attempts` and `dlq_time` (consumer/dead_letters.py). It is named
by its place on the dead-letter topic, `partition:offset`. Redrive republishes the original record (without
the `dlq_*` headers) to its original topic, where the group judges it like any other delivery: a record
redriven twice is a duplicate its inbox absorbs, and one whose aggregate had a later version applied
meanwhile is stale (the version guard keeps the newer state; the consumer logs a warning naming both
versions). What was redriven, acknowledged or purged is marked on `<group>.dlq.acks` (dlq_marks.py).
Reading never joins a group and never commits an offset, and stops at the end offsets read first
(topic_reader.py): an empty dead-letter topic answers at once.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka.errors import KafkaError

from outbox.consumer.dead_letters import REDRIVE_HEADER, dead_letter_topic
from outbox.kafka import start_producer, topic_prefix
from outbox.kafka.clients import KafkaAdmin
from outbox.ops.dlq_marks import Mark, latest_marks, marks_topic, write_marks
from outbox.ops.errors import OperatorError
from outbox.ops.topic_reader import Record, TopicReader

__all__ = [
    "REDRIVE_HEADER",
    "DeadLetter",
    "UnknownGroup",
    "dead_letter_topic",
    "read_dead_letters",
    "redrive",
    "run",
    "select",
]

ACTIONS = ("list", "show", "redrive", "ack", "purge")


class UnknownGroup(OperatorError):
    """No consumer group and no dead-letter topic by that name."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str  # partition:offset on the dead-letter topic
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    mark: Mark = field(default_factory=Mark)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def original_topic(self) -> str | None:
        return self.header("dlq_original_topic")

    @property
    def state(self) -> str:
        return self.mark.state

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "event_id": self.header("ce_id"),
            "type": self.header("ce_type"),
            "subject": self.header("ce_subject"),
            "original": f"{self.original_topic}[{self.header('dlq_original_partition')}]"
            f"@{self.header('dlq_original_offset')}",
            "reason": self.header("dlq_reason"),
            "attempts": self.header("dlq_attempts"),
            "dead_lettered_at": self.header("dlq_time"),
            "redriven": self.mark.redriven,
            "redriven_at": self.mark.redriven_at,
            "acked_at": self.mark.acked_at,
            "purged_at": self.mark.purged_at,
            "marked_by": self.mark.by,
        }

    def detail(self) -> dict[str, Any]:
        value = (self.value or b"").decode(errors="replace")
        return {
            **self.summary(),
            "key": (self.key or b"").decode(errors="replace"),
            "headers": {k: v.decode(errors="replace") for k, v in self.headers},
            "value": value if len(value) <= 4000 else value[:4000] + "…",
        }


def _letter(record: Record, marks: dict[str, Mark]) -> DeadLetter:
    letter = DeadLetter(id=record.id, key=record.key, value=record.value, headers=record.headers)
    mark = marks.get(record.id)
    if mark is not None and mark.event_id == letter.header("ce_id"):  # else: a mark of an older topic
        letter = replace(letter, mark=mark)
    return letter


async def read_dead_letters(
    bootstrap: str, topic: str, *, timeout_s: float = 15.0, group: str | None = None
) -> list[DeadLetter]:
    """Every record on the dead-letter topic up to its end offsets, with its marks. `group`: raise
    UnknownGroup when neither the topic nor a consumer group of that name exists (else: empty)."""
    async with TopicReader(bootstrap) as reader:
        known = await reader.topics()
        if topic not in known:
            if group is not None:
                await _check_group(bootstrap, group, known)
            return []
        acks = marks_topic(topic)
        bounds = await reader.bounds([topic, acks])
        records: list[Record] = []
        async for batch in reader.read(
            {tp: start for tp, (start, _) in bounds.items()},
            {tp: end for tp, (_, end) in bounds.items()},
            idle_timeout_s=timeout_s,
        ):
            records += batch
    marks = latest_marks(r for r in records if r.topic == acks)
    letters = [_letter(r, marks) for r in records if r.topic == topic]
    return sorted(letters, key=lambda d: tuple(int(x) for x in d.id.split(":")))


async def _check_group(bootstrap: str, group: str, topics: set[str]) -> None:
    """A group with no dead-letter topic yet is fine (nothing dead-lettered); an unknown name is an error
    listing the names that would work."""
    prefix = topic_prefix()
    named = {t[len(prefix) : -len(".dlq")] for t in topics if t.startswith(prefix) and t.endswith(".dlq")}
    groups: set[str] = set()
    admin = KafkaAdmin(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        groups = {str(g[0]) for g in await admin.list_consumer_groups()}
    except Exception:  # ListGroups refused (ACLs): the dead-letter topics still name groups
        pass
    finally:
        await admin.close()
    if group in groups:
        return
    known = sorted(named | groups)
    close = difflib.get_close_matches(group, known, n=3, cutoff=0.6)
    shown = close + [g for g in known if g not in close][: max(0, 12 - len(close))]
    raise UnknownGroup(
        f"no consumer group {group!r} and no dead-letter topic {dead_letter_topic(group)!r}"
        + (f" (OUTBOX_TOPIC_PREFIX={prefix!r})" if prefix else "")
        + (f"; did you mean {' or '.join(close)}?" if close else "")
        + (
            f"; {len(known)} known group(s): {', '.join(shown)}{', …' if len(known) > len(shown) else ''}"
            if known
            else "; the broker knows no group"
        )
    )


def select(letters: Sequence[DeadLetter], ids: Sequence[str] | None) -> list[DeadLetter]:
    if not ids:
        return list(letters)
    wanted = set(ids)
    unknown = wanted - {d.id for d in letters}
    if unknown:
        raise LookupError(f"no dead letter {', '.join(sorted(unknown))} on this topic")
    return [d for d in letters if d.id in wanted]


async def redrive(bootstrap: str, letters: Sequence[DeadLetter], *, idempotent: bool = True) -> int:
    """Republish each dead letter to its original topic with its original key, value and headers, plus
    `outbox_redrive`: the consumer's inbox remembers a dead-lettered event (so a plain redelivery is a
    duplicate); this header tells it the delivery is an operator's new attempt, judged by the version guard
    like any delivery (stale, and not applied, when a later version of its aggregate was applied)."""
    producer = await start_producer(bootstrap, idempotent=idempotent)
    try:
        futures = []
        for letter in letters:
            topic = letter.original_topic
            if not topic:
                raise ValueError(f"dead letter {letter.id} has no dlq_original_topic header")
            headers = [(k, v) for k, v in letter.headers if not k.startswith("dlq_") and k != REDRIVE_HEADER]
            headers.append((REDRIVE_HEADER, f"{letter.id}@{time.time():.3f}".encode()))
            futures.append(await producer.send(topic, value=letter.value, key=letter.key, headers=headers))
        for future in futures:
            await future
        return len(futures)
    finally:
        await producer.stop()


async def mark(bootstrap: str, topic: str, letters: Sequence[DeadLetter], action: str) -> None:
    """Record `action` (redriven, acked, purged) for each letter on the topic's marks topic."""
    await write_marks(
        bootstrap,
        marks_topic(topic),
        {d.id: replace(d.mark, event_id=d.header("ce_id")).did(action) for d in letters},
    )


# Which entries an action takes when no --id names them.
_DEFAULT_STATES = {"redrive": {"dead"}, "ack": {"dead", "redriven"}, "purge": {"redriven", "acked"}}


async def run(
    bootstrap: str,
    action: str,
    group: str,
    ids: Sequence[str] | None,
    *,
    yes: bool,
    include_purged: bool = False,
    states: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The `outbox dlq` command: list | show | redrive | ack | purge (the last three: dry run unless `yes`)."""
    topic = dead_letter_topic(group)
    every = await read_dead_letters(bootstrap, topic, group=group)
    if ids:
        letters = select(every, ids)
    elif action in _DEFAULT_STATES:
        letters = [d for d in every if d.state in _DEFAULT_STATES[action]]
    else:
        letters = [d for d in every if include_purged or d.state != "purged"]
    if states:
        letters = [d for d in letters if d.state in states]
    report: dict[str, Any] = {"topic": topic, "group": group}
    if action == "list":
        by_state = {s: sum(1 for d in every if d.state == s) for s in ("dead", "redriven", "acked", "purged")}
        return report | {
            "count": len(letters),
            "states": by_state,
            "dead_letters": [d.summary() for d in letters],
        }
    if action == "show":
        return report | {"dead_letters": [d.detail() for d in letters]}
    if action == "purge":
        unhandled = [d.id for d in letters if d.state not in ("redriven", "acked", "purged")]
        if unhandled:
            raise LookupError(
                f"dead letter(s) {', '.join(unhandled)} neither redriven nor acknowledged: "
                f"`outbox dlq ack --group {group} --id ID --yes` first"
            )
    done = {"redrive": "redriven", "ack": "acked", "purge": "purged"}[action]
    if not yes:
        return report | {"dry_run": True, f"would_{action}": [d.summary() for d in letters]}
    if action == "redrive":
        # acks=all without idempotence: a send retried twice is a duplicate the group's inbox absorbs, and a
        # broker without InitProducerId (Tansu) then costs no error line and fallback warning per command
        report["redriven"] = await redrive(bootstrap, letters, idempotent=False)
        report["note"] = STALE_NOTE
    else:
        report[done] = len(letters)
    report["ids"] = [d.id for d in letters]
    try:
        await mark(bootstrap, topic, letters, done)
    except KafkaError as exc:  # the action happened; only its mark is missing (an ACL on the marks topic?)
        report["mark_error"] = f"could not mark them on {marks_topic(topic)}: {type(exc).__name__}: {exc}"
    return report


STALE_NOTE = (
    "each is judged by the group's version guard like any delivery: one whose aggregate had a later "
    "version applied meanwhile is stale and not applied (the consumer logs it)"
)
