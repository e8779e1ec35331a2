"""The events auth publishes on topic `auth.account` (key = account id). Payloads are typed and versioned."""

from __future__ import annotations

import uuid
from typing import ClassVar

from pydantic import BaseModel

from outbox import Event

TOPIC = "auth.account"


class AccountEvent(BaseModel):
    TYPE: ClassVar[str]

    account_id: uuid.UUID
    email: str
    version: int

    def to_event(self) -> Event:
        return Event(
            topic=TOPIC,
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
