"""`create_app()`: console's FastAPI app (uvicorn console.main:create_app --factory)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI

from console.datasets.endpoints import router as datasets_router
from console.documents.endpoints import router as documents_router
from console.settings import TOPICS, Settings, get_settings
from servicekit import idempotency
from servicekit.app import create_database_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    return create_database_service_app(
        name="console",
        routers=[datasets_router, documents_router],
        database_url=settings.database_url,
        pool_size=settings.db_pool_size,
        max_body_bytes=settings.max_body_bytes,
        consumer_groups={settings.consumer_name: TOPICS},
        maintenance=[
            lambda db: idempotency.purge_loop(
                db.sessions, retention=timedelta(hours=settings.idempotency_retention_hours)
            )
        ],
    )
