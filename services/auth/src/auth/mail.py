"""Mail for account holders: events on topic `auth.mail`, which only a mail sender consumes.

One-time codes (password reset) travel here and nowhere else: not on `auth.account`, which other services
consume. Once the relay has published such an event, `scrub_published_mail` removes the code from auth's
retained outbox row, so the outbox (and its backups) keeps no usable code after delivery.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel
from sqlalchemy import text

from outbox import Event
from servicekit.db import Database

log = logging.getLogger("auth.mail")

TOPIC = "auth.mail"
SECRET_FIELDS = ("code",)
_SCRUB = text(
    "UPDATE outbox SET payload = payload - CAST(:fields AS text[])"
    " WHERE topic = :topic AND published_at IS NOT NULL AND payload ?| CAST(:fields AS text[])"
)


class MailEvent(BaseModel):
    TYPE: ClassVar[str]

    account_id: uuid.UUID
    email: str
    name: str

    def to_event(self) -> Event:
        return Event(
            topic=TOPIC, type=self.TYPE, aggregate_id=str(self.account_id), data=self.model_dump(mode="json")
        )


class PasswordResetCode(MailEvent):
    """Send `code` to `email`; it expires at `expires_at` and works once."""

    TYPE: ClassVar[str] = "auth.mail.password_reset_code"

    reset_id: uuid.UUID
    code: str
    expires_at: datetime


async def scrub_once(db: Database) -> int:
    async with db.sessions() as session, session.begin():
        result = await session.execute(_SCRUB, {"topic": TOPIC, "fields": list(SECRET_FIELDS)})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def scrub_published_mail(db: Database, interval_seconds: float) -> None:
    """Runs for the service's lifetime; every auth process may run it (the UPDATE is idempotent)."""
    while True:
        try:
            if scrubbed := await scrub_once(db):
                log.info("removed one-time codes from %d published mail event(s)", scrubbed)
        except Exception:  # the database is down: try again next round, never die
            log.warning("could not scrub published mail events; retrying", exc_info=True)
        await asyncio.sleep(interval_seconds)


class LoginCode(MailEvent):
    """Send `code` to `email` for a passwordless login; it expires at `expires_at` and works once."""

    TYPE: ClassVar[str] = "auth.mail.login_code"

    code: str
    expires_at: datetime
