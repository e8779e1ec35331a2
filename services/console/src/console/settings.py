"""Console settings from the environment (prefix CONSOLE_)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts import auth, indexer
from servicekit.settings import ServiceSettings, local_database_url

# The topics console.consumer subscribes to; main.py's /metrics reports the group's lag on them.
TOPICS = (auth.ACCOUNT_TOPIC, indexer.TOPIC)


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")

    database_url: str = Field(default_factory=lambda: local_database_url("console"))
    port: int = 8002
    max_body_bytes: int = 1_048_576
    consumer_name: str = "console"
    # Stored Idempotency-Key responses older than this are purged (a retry comes within minutes).
    idempotency_retention_hours: float = 24.0


@lru_cache
def get_settings() -> Settings:
    return Settings()
