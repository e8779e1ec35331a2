"""What auth publishes. Key = account id.

- `auth.account` (console consumes `registered`): `AccountRegistered`, `PasswordChanged`.
- `auth.mail` (only a mail sender consumes it; one-time codes travel nowhere else, and auth scrubs
  `SECRET_FIELDS` from its retained outbox rows once published): `PasswordResetCode`, `LoginCode`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

from pydantic import BaseModel

from outbox import Event

ACCOUNT_TOPIC = "auth.account"
MAIL_TOPIC = "auth.mail"
# Fields of `auth.mail` payloads removed from auth's outbox once the relay has published them.
SECRET_FIELDS = ("code",)


class AccountEvent(BaseModel):
    TOPIC: ClassVar[str] = ACCOUNT_TOPIC
    TYPE: ClassVar[str]

    account_id: uuid.UUID
    email: str
    version: int

    def to_event(self) -> Event:
        return Event(
            topic=self.TOPIC,
            type=self.TYPE,
            aggregate_id=str(self.account_id),
            data=self.model_dump(mode="json"),
            version=self.version,
        )


class AccountRegistered(AccountEvent):
    TYPE: ClassVar[str] = "auth.account.registered"

    name: str


class PasswordChanged(AccountEvent):
    TYPE: ClassVar[str] = "auth.account.password_changed"

    reason: str


class MailEvent(BaseModel):
    TOPIC: ClassVar[str] = MAIL_TOPIC
    TYPE: ClassVar[str]

    account_id: uuid.UUID
    email: str
    name: str

    def to_event(self) -> Event:
        return Event(
            topic=self.TOPIC,
            type=self.TYPE,
            aggregate_id=str(self.account_id),
            data=self.model_dump(mode="json"),
        )


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
