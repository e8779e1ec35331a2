"""`create_app()`: the indexer's FastAPI app (uvicorn indexer.main:create_app --factory)."""

from __future__ import annotations

from fastapi import FastAPI

from indexer.documents.endpoints import router as documents_router
from indexer.search.endpoints import router as search_router
from indexer.settings import TOPICS, Settings, get_settings
from servicekit.app import create_database_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    return create_database_service_app(
        name="indexer",
        routers=[search_router, documents_router],
        database_url=settings.database_url,
        pool_size=settings.db_pool_size,
        max_body_bytes=settings.max_body_bytes,
        consumer_groups={settings.consumer_name: TOPICS},
    )
