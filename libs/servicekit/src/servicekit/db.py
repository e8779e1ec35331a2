"""Database wiring shared by the services: one engine per process, a unit of work per request or message.

Services never commit. The unit of work writes the aggregate changes **and** the events they recorded
into the outbox, then commits once (`commit()`), or rolls everything back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from outbox import Event, OutboxWriter
from outbox.database_url import psycopg_url
from outbox.telemetry.tracing import tracing_configured

normalise_url = psycopg_url  # the library's rule, under the name the services know


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        normalise_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,  # errors and logs never carry values (password hashes, document text)
    )
    if tracing_configured():
        # One span per statement, children of the request's or the message's span: the DB leg of a trace.
        # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1 but only uses the engine event API,
        # which 2.1 keeps (tests/e2e/test_journey.py asserts the spans).
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, skip_dep_check=True)
        _no_connect_spans()
    return engine


def _no_connect_spans() -> None:
    """Instrumenting also wraps every `Engine.connect` in a `connect` span: one more span per transaction
    (a pool checkout, not a connection being opened), carrying only the server's address and database name,
    which each statement's span carries too. Unwrapped: the statements' spans stay, with the same parent."""
    from opentelemetry.instrumentation.utils import unwrap
    from sqlalchemy.engine.base import Engine

    if hasattr(Engine.connect, "__wrapped__"):
        unwrap(Engine, "connect")


class UnitOfWork:
    """A session plus the events the service recorded while changing state."""

    def __init__(self, session: AsyncSession, writer: OutboxWriter) -> None:
        self.session = session
        self.writer = writer
        self._events: list[Event] = []

    def emit(self, *events: Event) -> None:
        self._events.extend(events)

    async def flush_events(self) -> None:
        """Write the recorded events into the outbox in the current transaction (idempotent)."""
        events, self._events = self._events, []
        await self.writer.add(self.session, *events)

    async def commit(self) -> None:
        await self.flush_events()
        await self.session.commit()

    async def rollback(self) -> None:
        self._events.clear()
        await self.session.rollback()


class Database:
    def __init__(self, url: str, writer: OutboxWriter, *, pool_size: int = 10) -> None:
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.writer = writer

    @asynccontextmanager
    async def unit_of_work(self, *, commit_on: tuple[type[object], ...] = ()) -> AsyncIterator[UnitOfWork]:
        """Commit on success, roll back on any exception; the one place that commits.

        `commit_on`: exceptions that commit before they propagate, for refusals whose bookkeeping must
        persist (auth's reused refresh token revokes its family; a wrong reset code counts an attempt)."""
        async with self.sessions() as session:
            uow = UnitOfWork(session, self.writer)
            try:
                yield uow
            except BaseException as exc:
                if commit_on and isinstance(exc, commit_on):
                    await uow.commit()
                else:
                    await uow.rollback()
                raise
            await uow.commit()

    async def dispose(self) -> None:
        await self.engine.dispose()
