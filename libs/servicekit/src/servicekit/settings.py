"""The settings every database-owning service shares; each service subclasses with its env prefix and defaults."""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings

from servicekit.db import normalise_url


class ServiceSettings(BaseSettings):
    database_url: str
    host: str = "127.0.0.1"
    port: int
    max_body_bytes: int = 1_048_576
    db_pool_size: int = 10
    # Kafka consumer group and inbox key of the service's consumer process.
    consumer_name: str

    @field_validator("database_url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return normalise_url(value)
