"""The catalogue against the real wire: every catalogued event written by the outbox writer as its producer
writes it, published by the relay to the real broker, and each record's key, headers and value checked
against its message in docs/events/asyncapi.json (real PostgreSQL and broker, nothing mocked)."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator
from itertools import groupby
from typing import Any

import jsonschema
import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from contracts import catalogue
from libs.contracts.tests.catalogue_support import FORMATS, document, resolve, schema_file
from outbox import OutboxWriter, create_tables
from outbox.kafka import bootstrap_from_env
from outbox.testing import drain_outbox, headers_of, read_topic, wire
from testsupport import recreate_database
from testsupport.processes import PG_HOST, PG_PORT, PG_USER


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    name = f"contracts_catalogue_{os.environ['TEST_RUN_ID']}"
    engine = create_async_engine(recreate_database(name), pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(create_tables)
    yield engine
    await engine.dispose()
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # a database per run: leave none behind


async def test_every_record_the_relay_publishes_matches_its_catalogued_message(engine: AsyncEngine) -> None:
    doc = document()
    owners = {topic.address: topic.producer for topic in catalogue.TOPICS}
    entries = catalogue.catalogued()  # ordered by topic: each producer writes its own in one transaction
    sessions = async_sessionmaker(engine)
    for topic, members in groupby(entries, key=lambda e: e.event.topic):
        async with sessions() as session, session.begin():
            await OutboxWriter(source=owners[topic]).add(
                session, *(dataclasses.replace(e.event, id=uuid.uuid4()) for e in members)
            )
    bootstrap = bootstrap_from_env()
    prefix = wire(f"catalogue-{uuid.uuid4().hex[:8]}.")  # this test's own topics
    relay = await drain_outbox(engine, bootstrap, topic_prefix=prefix)
    assert relay.stats.published == len(entries)

    seen: list[dict[str, str]] = []
    for topic in catalogue.TOPICS:
        expected = {e.event.type: e for e in entries if e.event.topic == topic.address}
        records = await read_topic(bootstrap, prefix + topic.address, expect=len(expected))
        assert sorted(headers_of(r)["ce_type"] for r in records) == sorted(expected)
        channel = next(c for c in doc["channels"].values() if c["address"] == topic.address)
        for record in records:
            headers = headers_of(record)
            entry = expected[headers["ce_type"]]
            assert headers["ce_type"] in channel["messages"]
            message = doc["components"]["messages"][headers["ce_type"]]
            declared = message["headers"]
            jsonschema.validate(headers, declared, cls=jsonschema.Draft7Validator, format_checker=FORMATS)
            assert set(headers) <= set(declared["properties"]), "a header the catalogue does not name"
            value: dict[str, Any] = json.loads(record.value or b"")
            jsonschema.validate(
                value, resolve(doc, message["payload"]["$ref"]), cls=jsonschema.Draft7Validator
            )
            standalone = schema_file(entry.event.type)
            jsonschema.validate(
                value, standalone, cls=jsonschema.Draft202012Validator, format_checker=FORMATS
            )
            assert record.key is not None
            key = record.key.decode()
            assert key == headers["ce_subject"] == value[catalogue.key_field(entry.event)]
            jsonschema.validate(
                key,
                message["bindings"]["kafka"]["key"],
                cls=jsonschema.Draft7Validator,
                format_checker=FORMATS,
            )
            seen.append(headers)
    # The optional headers were on the wire too, so they were checked against the catalogue.
    assert any("ce_prevversion" in h for h in seen) and any("ce_aggregateversion" not in h for h in seen)
