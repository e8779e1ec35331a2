"""The durable broker stand-in's fetch cost, measured (issue 27; test_chaos.py's docstring has the figures).

    uv run --frozen python -m tests.e2e.tansu_s3_probe s3 250      # storage (s3|memory), fetch wait in ms
    taskset -c 1 uv run --frozen python -m tests.e2e.tansu_s3_probe s3 10   # on a busy or slow core

Writes 400 one-record batches over 8 partitions, then consumes them with one group member and prints how
many records each fetch brought and how long the whole took. With s3 storage a fetch returns only what
Tansu read before the fetch wait ran out, after listing every record object of each partition, so the
records per fetch fall with a shorter wait, a slower CPU and a longer history; with memory storage the
first fetch brings everything.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from testsupport.broker import MotoS3, TansuBroker

RECORDS = 400
PARTITIONS = 8


async def probe(bootstrap: str, wait_ms: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic("probe", PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    started = time.monotonic()
    for i in range(RECORDS):  # one record per batch: one object per record on s3
        await producer.send_and_wait("probe", b"x" * 300, key=str(i % 50).encode())
    print(f"produced {RECORDS} one by one in {time.monotonic() - started:.1f}s")
    await producer.stop()
    consumer = AIOKafkaConsumer(
        "probe",
        bootstrap_servers=bootstrap,
        group_id="probe",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
        max_poll_records=500,
        session_timeout_ms=6000,
        request_timeout_ms=20000,
    )
    await consumer.start()
    got, fetches = 0, []
    started = time.monotonic()
    while got < RECORDS and time.monotonic() - started < 120:
        fetched = await consumer.getmany(timeout_ms=200, max_records=500)
        if n := sum(len(records) for records in fetched.values()):
            fetches.append(n)
            got += n
    print(f"consumed {got}/{RECORDS} in {time.monotonic() - started:.1f}s, records per fetch: {fetches}")
    await consumer.stop()


def main() -> None:
    storage = sys.argv[1] if len(sys.argv) > 1 else "s3"
    wait_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 250
    if storage == "s3":
        with MotoS3() as s3, TansuBroker(s3=s3) as broker:
            asyncio.run(probe(broker.bootstrap, wait_ms))
    else:
        with TansuBroker() as broker:
            asyncio.run(probe(broker.bootstrap, wait_ms))


if __name__ == "__main__":
    main()
