"""The mail sender's consumer: one `auth.mail.*` event per transaction, its inbox row committed after the
mail went out, so a redelivered event sends nothing twice (a crash between the send and that commit sends
it again, with the same Message-ID)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage

from pydantic import ValidationError

from auth.mailer.message import render
from auth.mailer.settings import MailerSettings
from auth.mailer.smtp import MailNotSent, SmtpSender
from contracts.auth import MAIL_TOPIC, parse_mail
from outbox import ConsumerSettings, EventContext, IdempotentConsumer, Reject
from servicekit.db import Database

log = logging.getLogger("auth.mailer")

Send = Callable[[EmailMessage], Awaitable[None]]


def consumer_settings(settings: MailerSettings) -> ConsumerSettings:
    # One event per batch: a failure replays the batch event by event, which would send a batch's earlier
    # mails again. Retries reach further than the defaults (an SMTP server restarting), within the
    # careful path's budget.
    base = ConsumerSettings.from_env()
    return dataclasses.replace(
        base, max_batch=1, max_attempts=settings.max_attempts, retry_max_s=settings.retry_max_seconds
    )


def build_consumer(
    db: Database,
    settings: MailerSettings,
    consumer_config: ConsumerSettings | None = None,
    send: Send | None = None,
) -> IdempotentConsumer:
    consumer = IdempotentConsumer(
        settings.consumer_name, (MAIL_TOPIC,), db.sessions, consumer_config or consumer_settings(settings)
    )
    deliver = send or SmtpSender(settings).send

    # No version guard: mail events carry no aggregate version; the inbox alone makes them idempotent.
    @consumer.handler(f"{MAIL_TOPIC}.*", version_guard=False)
    async def send_mail(ctx: EventContext) -> None:
        event = ctx.event
        try:
            mail = parse_mail(event.type, event.data)
        except ValidationError as exc:  # malformed: no retry can help
            raise Reject(f"malformed {event.type}: {exc.error_count()} error(s)") from exc
        if mail is None:
            log.info("skipping %s (%s): no code (scrubbed) or an unknown mail type", event.id, event.type)
            return
        now = datetime.now(UTC)
        expires_at = getattr(mail, "expires_at", None)
        if isinstance(expires_at, datetime) and expires_at <= now:
            log.info("skipping %s (%s): its code expired at %s", event.id, event.type, expires_at.isoformat())
            return
        try:
            await deliver(render(mail, event.id, settings, now))
        except MailNotSent as exc:
            log.warning("could not send %s (%s), attempt %d: %s", event.id, event.type, ctx.attempt, exc)
            raise
        log.info("sent %s (%s) to account %s", event.id, event.type, mail.account_id)

    return consumer
