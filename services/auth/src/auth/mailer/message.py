"""The mail of an `auth.mail.*` event: plain text with the code and its expiry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from auth.mailer.settings import MailerSettings
from contracts.auth import LoginCode, MailEvent, PasswordResetCode


def _expiry(expires_at: datetime, now: datetime) -> str:
    minutes = max(1, round((expires_at - now).total_seconds() / 60))
    when = expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"It expires at {when} (in about {minutes} minute{'s' if minutes != 1 else ''}) and works once."


def _body(mail: MailEvent, now: datetime) -> tuple[str, str]:
    if isinstance(mail, PasswordResetCode):
        return "Your password reset code", (
            f"Hello {mail.name},\n\n"
            f"Your password reset code is: {mail.code}\n\n"
            f"{_expiry(mail.expires_at, now)}\n"
            "Enter it with your new password. If you did not ask for it, ignore this mail: your password "
            "stays as it is.\n"
        )
    if isinstance(mail, LoginCode):
        # The code works only with the token the login request answered, which the requester holds.
        return "Your login code", (
            f"Hello {mail.name},\n\n"
            f"Your login code is: {mail.code}\n\n"
            f"{_expiry(mail.expires_at, now)}\n"
            "Enter it on the page where you asked for it. If you did not ask for it, ignore this mail.\n"
        )
    raise TypeError(f"no mail text for {type(mail).__name__}")


def render(mail: MailEvent, event_id: uuid.UUID, settings: MailerSettings, now: datetime) -> EmailMessage:
    """The Message-ID derives from the event id: a mail sent again (a crash between sending and the inbox
    commit) carries the same one, which mail systems can use to drop the copy."""
    subject, body = _body(mail, now)
    message = EmailMessage()
    message["From"] = formataddr((settings.from_name, settings.from_address))
    message["To"] = formataddr((mail.name, mail.email))
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    domain = settings.from_address.rpartition("@")[2] or "localhost"
    message["Message-ID"] = f"<{event_id}@{domain}>"
    message.set_content(body)
    return message
