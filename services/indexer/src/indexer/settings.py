"""Indexer settings from the environment (prefix INDEXER_)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from servicekit.db import normalise_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/indexer"
    host: str = "127.0.0.1"
    port: int = 8003
    max_body_bytes: int = 65_536
    db_pool_size: int = 10
    # Kafka consumer group and inbox key of `python -m indexer.consumer`.
    consumer_name: str = "indexer"

    @field_validator("database_url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return normalise_url(value)


@lru_cache
def get_settings() -> Settings:
    return Settings()
