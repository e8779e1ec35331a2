"""Mail for account holders: events on topic `auth.mail` (`contracts.auth`), which only a mail sender consumes.

One-time codes (password reset, email-code login) travel here and nowhere else: not on `auth.account`, which
other services consume. Once the relay is done with such an event, published or given up on (a dead row,
kept `OUTBOX_DEAD_RETENTION_HOURS` for operators), `scrub_published_mail` removes the code from auth's
retained outbox row, so the outbox (and its backups) keeps no usable code after delivery or failure. A row
still pending keeps its code: the mail has not gone out yet. A dead row redriven after its scrub reaches the
mail sender without a code; `contracts.auth.parse_mail` gives it None (nothing to send, as for an expired code).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from contracts.auth import MAIL_TOPIC, SECRET_FIELDS
from servicekit.db import Database

log = logging.getLogger("auth.mail")

_SCRUB = text(
    "UPDATE outbox SET payload = payload - CAST(:fields AS text[])"
    " WHERE topic = :topic AND (published_at IS NOT NULL OR dead_at IS NOT NULL)"
    " AND payload ?| CAST(:fields AS text[])"
)


async def scrub_once(db: Database) -> int:
    async with db.sessions() as session, session.begin():
        result = await session.execute(_SCRUB, {"topic": MAIL_TOPIC, "fields": list(SECRET_FIELDS)})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def scrub_published_mail(db: Database, interval_seconds: float) -> None:
    """Runs for the service's lifetime; every auth process may run it (the UPDATE is idempotent)."""
    while True:
        try:
            if scrubbed := await scrub_once(db):
                log.info("removed one-time codes from %d published or dead mail event(s)", scrubbed)
        except Exception:  # the database is down: try again next round, never die
            log.warning("could not scrub published mail events; retrying", exc_info=True)
        await asyncio.sleep(interval_seconds)
