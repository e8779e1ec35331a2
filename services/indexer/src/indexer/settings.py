"""Indexer settings from the environment (prefix INDEXER_)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts import console
from servicekit.settings import ServiceSettings, local_database_url

# The topics indexer.consumer subscribes to; main.py's /metrics reports the group's lag on them.
TOPICS = (console.TOPIC,)


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore")

    database_url: str = Field(default_factory=lambda: local_database_url("indexer"))
    port: int = 8003
    max_body_bytes: int = 65_536
    consumer_name: str = "indexer"


@lru_cache
def get_settings() -> Settings:
    return Settings()
