"""The settings every database-owning service shares; each service subclasses with its env prefix and defaults."""

from __future__ import annotations

import os

from pydantic import field_validator
from pydantic_settings import BaseSettings

from servicekit.db import normalise_url


def local_database_url(database: str) -> str:
    """The default URL of a service's database: libpq's PGHOST/PGPORT/PGUSER (what `make stack` creates the
    databases with), 127.0.0.1:5432 as postgres otherwise. A `<SERVICE>_DATABASE_URL` overrides it."""
    env = os.environ.get
    return f"postgresql+psycopg://{env('PGUSER', 'postgres')}@{env('PGHOST', '127.0.0.1')}:{env('PGPORT', '5432')}/{database}"


def local_redis_url() -> str:
    """REDIS_HOST/REDIS_PORT (as `make stack` reads them), 127.0.0.1:6379 otherwise; AUTH_REDIS_URL overrides."""
    return f"redis://{os.environ.get('REDIS_HOST', '127.0.0.1')}:{os.environ.get('REDIS_PORT', '6379')}/0"


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
