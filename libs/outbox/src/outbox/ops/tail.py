"""`outbox tail TOPIC`: a topic's records as CloudEvents, for people (one block per event) or scripts.

Reads like `outbox dlq` (topic_reader.py): no group, no commit. Without `--from-beginning` it shows the last
N records (10) of the topic, newest last; with it, the first N (all without -n). With `--key` or `--type`,
the topic is read from its start and the last N matching records are kept (a full scan: fine for the
topics an operator tails, slow on a very long one). `--follow` then waits for new records until Ctrl-C.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from outbox.kafka import topic_prefix
from outbox.ops.errors import OperatorError
from outbox.ops.topic_reader import Record, TopicReader

DEFAULT_LAST = 10


class UnknownTopic(OperatorError):
    """No such topic on the broker (with or without OUTBOX_TOPIC_PREFIX)."""


@dataclass(frozen=True, slots=True)
class TailQuery:
    topic: str  # logical (OUTBOX_TOPIC_PREFIX is added) or the wire name
    key: str | None = None
    event_type: str | None = None
    count: int | None = None  # None: DEFAULT_LAST, or all with from_beginning
    from_beginning: bool = False

    def matches(self, record: Record) -> bool:
        if self.key is not None and (record.key or b"").decode(errors="replace") != self.key:
            return False
        return self.event_type is None or record.header("ce_type") == self.event_type


def decode(record: Record) -> dict[str, Any]:
    """A record as one JSON-able object: the CloudEvents attributes (`ce_*` headers, without the prefix),
    the other headers, and the data (parsed JSON, else text)."""
    event = {k[3:]: v.decode(errors="replace") for k, v in record.headers if k.startswith("ce_")}
    headers = {k: v.decode(errors="replace") for k, v in record.headers if not k.startswith("ce_")}
    text = (record.value or b"").decode(errors="replace")
    data: Any
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = text
    prefix = topic_prefix()
    return {
        "topic": record.topic[len(prefix) :] if prefix and record.topic.startswith(prefix) else record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds"),
        "key": None if record.key is None else record.key.decode(errors="replace"),
        "event": event,
        "headers": headers,
        "data": data,
    }


async def _wire_topic(reader: TopicReader, topic: str) -> str:
    known = await reader.topics()
    for candidate in (topic_prefix() + topic, topic):
        if candidate in known:
            return candidate
    prefix = topic_prefix()
    mine = sorted(t[len(prefix) :] for t in known if t.startswith(prefix) and not t.startswith("__"))
    shown = ", ".join(mine[:30]) + (", …" if len(mine) > 30 else "")
    raise UnknownTopic(
        f"no topic {prefix + topic!r} on the broker"
        + (f" (OUTBOX_TOPIC_PREFIX={prefix!r})" if prefix else "")
        + (f"; topics: {shown}" if mine else "")
    )


async def tail(bootstrap: str, query: TailQuery, *, follow: bool = False) -> AsyncIterator[dict[str, Any]]:
    """The chosen records, decoded, oldest first; then, with `follow`, each new matching one."""
    async with TopicReader(bootstrap) as reader:
        wire = await _wire_topic(reader, query.topic)
        bounds = await reader.bounds([wire])
        ends = {tp: end for tp, (_, end) in bounds.items()}
        filtered = query.key is not None or query.event_type is not None
        count = query.count if query.count is not None else (None if query.from_beginning else DEFAULT_LAST)
        if query.from_beginning or filtered or count is None:
            starts = {tp: start for tp, (start, _) in bounds.items()}
        else:  # the last `count` of the topic are among the last `count` of each partition
            starts = {tp: max(start, end - count) for tp, (start, end) in bounds.items()}
        kept: deque[Record] = deque(maxlen=None if query.from_beginning else count)
        async for batch in reader.read(starts, ends):
            kept.extend(r for r in batch if query.matches(r))
            if query.from_beginning and count is not None and len(kept) >= count:
                break
        chosen = sorted(kept, key=lambda r: (r.timestamp, r.partition, r.offset))
        if query.from_beginning and count is not None:
            chosen = chosen[:count]
        elif count is not None:
            chosen = chosen[-count:] if count else []
        for record in chosen:
            yield decode(record)
        if not follow:
            return
        # New records only: from where the read stopped (the end found first, or past it), nothing twice.
        positions = {tp: max(ends[tp], await reader.position(tp)) for tp in bounds}
        async for batch in reader.follow(bounds, positions):
            for record in sorted(batch, key=lambda r: (r.timestamp, r.partition, r.offset)):
                if query.matches(record):
                    yield decode(record)
