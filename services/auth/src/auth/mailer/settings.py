"""Mail sender settings from the environment (prefix MAILER_).

Secrets may come from files (`MAILER_<NAME>_FILE`, servicekit.secrets): the database URL and password, and
the SMTP password. The inbox lives in auth's database (rows keyed by the consumer group), so the default URL
is auth's, as its `auth_app` role.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from servicekit.settings import DatabaseUrlSettings, local_database_url


class MailerSettings(DatabaseUrlSettings):
    model_config = SettingsConfigDict(env_prefix="MAILER_", extra="ignore")
    secret_fields: ClassVar[tuple[str, ...]] = (*DatabaseUrlSettings.secret_fields, "smtp_password")

    database_url: str = Field(default_factory=lambda: local_database_url("auth"))
    # The consumer group; its dead letters go to `<consumer_name>.dlq`.
    consumer_name: str = "auth-mailer"

    # Defaults: the local sink `make run` starts (scripts/mail_sink.py).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # none: plain SMTP (the local sink only); starttls: upgrade after connecting (submission, 587);
    # tls: implicit TLS from the first byte (465).
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    from_address: str = "no-reply@localhost"
    from_name: str = "Outbox reference"

    # Retries of a mail that could not be sent (SMTP down, 4xx): the consumer's retry policy with a longer
    # reach than its defaults (about 45 s, inside the consumer's 60 s budget per batch); past it the event
    # is dead-lettered (`outbox dlq redrive --group auth-mailer` brings it back).
    max_attempts: int = Field(default=12, ge=1)
    retry_max_seconds: float = Field(default=10.0, gt=0)
