"""`create_app()`: the indexer's FastAPI app (uvicorn indexer.main:create_app --factory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from indexer.documents.endpoints import router as documents_router
from indexer.search.endpoints import router as search_router
from indexer.settings import Settings, get_settings
from outbox import OutboxWriter
from servicekit.app import create_service_app
from servicekit.auth import TokenVerifier
from servicekit.db import Database


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        db = Database(settings.database_url, OutboxWriter(source="indexer"), pool_size=settings.db_pool_size)
        try:
            async with TokenVerifier.from_settings() as verifier:
                # Lifespan state: request.state.db and request.state.token_verifier in dependencies.
                yield {"db": db, "token_verifier": verifier}
        finally:
            await db.dispose()

    return create_service_app(
        name="indexer",
        routers=[search_router, documents_router],
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
