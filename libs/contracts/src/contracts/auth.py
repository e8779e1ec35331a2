"""What auth publishes. Key = account id.

- `auth.account` (console consumes `registered`): `AccountRegistered`, `PasswordChanged`.
- `auth.mail` (only a mail sender consumes it; one-time codes travel nowhere else, and auth scrubs
  `SECRET_FIELDS` from its retained outbox rows once published or dead): `PasswordResetCode`, `LoginCode`.
  A mail sender parses with `parse_mail`, which returns None for an event without its code (a dead row
  an operator redrove after the scrub): nothing to send, as for an expired code.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

from contracts.base import Payload
from outbox import Event

ACCOUNT_TOPIC = "auth.account"
MAIL_TOPIC = "auth.mail"
# Fields of `auth.mail` payloads removed from auth's outbox once the relay has published them or given up
# on them (dead rows).
SECRET_FIELDS = ("code",)


class AccountEvent(Payload):
    TOPIC: ClassVar[str] = ACCOUNT_TOPIC
    KEY: ClassVar[str] = "account_id"

    account_id: uuid.UUID
    email: str
    version: int

    def to_event(self) -> Event:
        return self.event(version=self.version)


class AccountRegistered(AccountEvent):
    TYPE: ClassVar[str] = "auth.account.registered"

    name: str


class PasswordChanged(AccountEvent):
    TYPE: ClassVar[str] = "auth.account.password_changed"

    reason: str


class MailEvent(Payload):
    TOPIC: ClassVar[str] = MAIL_TOPIC
    KEY: ClassVar[str] = "account_id"

    account_id: uuid.UUID
    email: str
    name: str

    def to_event(self) -> Event:
        return self.event()


class PasswordResetCode(MailEvent):
    """Send `code` to `email`; it expires at `expires_at` and works once."""

    TYPE: ClassVar[str] = "auth.mail.password_reset_code"

    reset_id: uuid.UUID
    code: str
    expires_at: datetime


class LoginCode(MailEvent):
    """Send `code` to `email` for a passwordless login; it expires at `expires_at` and works once."""

    TYPE: ClassVar[str] = "auth.mail.login_code"

    code: str
    expires_at: datetime


MAIL_EVENTS: dict[str, type[MailEvent]] = {model.TYPE: model for model in (PasswordResetCode, LoginCode)}


def parse_mail(event_type: str, data: Mapping[str, Any]) -> MailEvent | None:
    """The typed mail of an `auth.mail.*` event, or None when there is nothing to send: a type this contract
    does not know, or an event whose one-time code auth scrubbed (a dead outbox row loses it; redriven
    anyway, it arrives without one and cannot be sent, like a code past `expires_at`). A mail sender skips
    None; anything else malformed raises `ValidationError`."""
    model = MAIL_EVENTS.get(event_type)
    if model is None or any(data.get(field) is None for field in SECRET_FIELDS):
        return None
    return model.model_validate(data)
