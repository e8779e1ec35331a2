"""`python -m auth.mailer`: sends the mails of topic `auth.mail` over SMTP (settings: MAILER_*).
SIGTERM/SIGINT finish the mail in hand and stop."""

from __future__ import annotations

import asyncio
import logging

from auth.mailer.consumer import build_consumer
from auth.mailer.settings import MailerSettings
from outbox import OutboxWriter
from servicekit.consumer_process import run_consumer
from servicekit.db import Database


async def main() -> None:
    settings = MailerSettings()
    db = Database(settings.database_url, OutboxWriter(source="auth-mailer"), pool_size=2)
    await run_consumer("auth-mailer", db, lambda db: build_consumer(db, settings))
    logging.getLogger("auth.mailer").info("mail sender stopped")


if __name__ == "__main__":
    asyncio.run(main())
