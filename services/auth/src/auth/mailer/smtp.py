"""Sending over SMTP (aiosmtplib), with failures sorted the way the consumer needs them.

A refusal of this mail (5xx to MAIL FROM, RCPT TO or DATA: no such mailbox, content refused) can never
succeed: `outbox.Reject`, dead-lettered at once. Everything else (refused connection, timeout, 4xx, an
authentication or TLS failure: the server or our configuration, not the mail) raises `MailNotSent`, which
the consumer retries and dead-letters only past its attempts.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage

import aiosmtplib

from auth.mailer.settings import MailerSettings
from outbox import Reject


class MailNotSent(Exception):
    """A failure that may pass: retry."""


def _permanent(code: int) -> bool:
    return 500 <= code < 600


class SmtpSender:
    def __init__(self, settings: MailerSettings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username or None,
                password=password,
                use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls",
                timeout=s.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            if codes and all(_permanent(code) for code in codes):
                raise Reject(f"recipient refused: {detail}") from exc
            raise MailNotSent(f"recipient deferred: {detail}") from exc
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as exc:
            if _permanent(exc.code):
                raise Reject(f"mail refused: {exc.code} {exc.message}") from exc
            raise MailNotSent(f"mail deferred: {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise MailNotSent(f"{type(exc).__name__}: {exc}") from exc
