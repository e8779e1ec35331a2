"""What a failure means, decided in one place by exception type.

A publish failure is either about one record (it can never be written as it is: too large, corrupt, a bad
timestamp) or about the path to the broker (unreachable, no leader, not authorised, timed out). Only
record failures count against a row and can dead-letter it; everything else is an outage: the rows stay
pending, untouched, and the relay backs off. Dead-lettering good rows during an ACL or cluster outage
would publish their successors first and make any later redrive arrive out of order.

A third kind is the producer's own state: the idempotent producer numbers each partition's batches, and
aiokafka never rewinds that number after a rejected batch, so every later batch of the partition answers
OUT_OF_ORDER_SEQUENCE_NUMBER (or UNKNOWN_PRODUCER_ID once the broker forgot the producer). Those are not
the rows' fault either: the relay replaces the producer (a new producer id restarts the sequence) and
retries without counting an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from enum import Enum

import psycopg
from aiokafka.errors import (
    CorruptRecordException,
    InvalidProducerEpoch,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnknownProducerId,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


class PublishFailure(Enum):
    RECORD = "record"  # this record can never be written as it is: counts against the row
    OUTAGE = "outage"  # the broker, the cluster or the way to it: the row is untouched, retried later
    PRODUCER = "producer"  # the producer's sequence state is broken: replace it, the row is untouched


# CorruptRecordException and InvalidMessageError share error code 2; aiokafka raises the former.
RECORD_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
)


PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


class PublishTimeout(Exception):
    """The broker did not acknowledge within the relay's ack deadline (a hung broker, too few replicas)."""


def classify_publish_error(exc: BaseException) -> PublishFailure:
    if isinstance(exc, RECORD_ERRORS):
        return PublishFailure.RECORD
    if isinstance(exc, PRODUCER_ERRORS):
        return PublishFailure.PRODUCER
    return PublishFailure.OUTAGE


def is_database_outage(exc: BaseException) -> bool:
    """The database (or the connection to it) failed, not the statement: retry the batch later."""
    if isinstance(exc, (OperationalError, InterfaceError, psycopg.OperationalError, OSError)):
        return True
    if isinstance(exc, asyncio.TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class TransientPublishError(Exception):
    """Some rows could not be published for a reason that is not theirs (an outage): retry later."""


class DatabaseUnavailable(Exception):
    """The relay's database failed (not a statement): the batch is retried later."""


@contextlib.asynccontextmanager
async def outages_classified() -> AsyncIterator[None]:
    """Turn a batch's failures into the two the relay retries: the cluster's (metadata, topic creation)
    and the database's. Anything else is a bug and propagates as is."""
    try:
        yield
    except (TransientPublishError, DatabaseUnavailable):
        raise
    except KafkaError as exc:
        raise TransientPublishError(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        if is_database_outage(exc):
            raise DatabaseUnavailable(str(exc)) from exc
        raise
