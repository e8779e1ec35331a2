"""A relay and a consumer started while the broker and the database are both down keep running, retry with
backoff (a line per outage per interval, not per retry), and deliver once both come back: under a process
manager that starts everything at once (compose, `make run`), start order must not matter."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from outbox import Event, OutboxWriter
from testsupport import ServiceProcess, wait_until
from testsupport.broker import TansuBroker
from testsupport.tcp_proxy import TcpProxy

pytestmark = pytest.mark.usefixtures("clean")

APPS = Path(__file__).parent / "apps"


async def test_relay_and_consumer_started_before_the_broker_and_database_wait_then_deliver(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    writer: OutboxWriter,
    topic: str,
    log_dir: Path,
) -> None:
    url = make_url(database_url)
    database = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    database.cut("refuse")  # the database is down when the processes start
    broker = TansuBroker()  # not started: its port is closed
    proxied = url.set(host="127.0.0.1", port=int(database.address.rsplit(":", 1)[1]))
    proxied_url = proxied.render_as_string(hide_password=False)
    env = {"KAFKA_BOOTSTRAP": broker.bootstrap, "OUTBOX_NOTIFY_CHANNEL": ""}
    group = f"cold-{uuid.uuid4().hex[:8]}"
    relay = ServiceProcess(
        "cold-relay",
        [sys.executable, "-m", "outbox", "relay", "--database-url", proxied_url, "--name", "cold"],
        env=env,
        log_dir=log_dir,
    )
    consumer = ServiceProcess(
        "cold-consumer",
        [sys.executable, str(APPS / "effect_consumer.py"), proxied_url, group, topic],
        env=env,
        log_dir=log_dir,
    )
    try:
        relay.start()
        consumer.start()

        async def both_report_it() -> bool:
            return _said(relay, "rows not published") and _said(consumer, "cannot start")

        await wait_until(
            both_report_it,
            timeout=60,
            what="both processes reporting the outage",
        )
        await asyncio.sleep(8)  # several retries' worth: a process that gives up has exited by now
        assert relay.alive and consumer.alive, relay.tail() + consumer.tail()
        # Retries double up to a few seconds, but an outage is logged once per interval, not per retry.
        assert relay.log_path.read_text().count("rows not published") == 1, relay.tail()

        async with sessions() as session, session.begin():
            await writer.add(
                session,
                Event(topic=topic, type=f"{topic}.made", aggregate_id="cold-1", data={"n": 1}, version=1),
            )
        database.restore()
        broker.start()

        async def applied() -> bool:
            async with engine.connect() as conn:
                found = await conn.execute(
                    text("SELECT count(*) FROM effects WHERE consumer = :c"), {"c": group}
                )
                return int(found.scalar_one()) == 1

        await wait_until(applied, timeout=90, what="the event applied once both came back")
        assert "publishing again" in relay.log_path.read_text(), relay.tail()
    finally:
        relay.terminate()
        consumer.terminate()
        broker.stop()
        database.stop()


def _said(process: ServiceProcess, words: str) -> bool:
    return process.log_path.exists() and words in process.log_path.read_text()
