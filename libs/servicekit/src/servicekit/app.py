"""`create_service_app`: the shared shape of a service's FastAPI app (errors, body limit, tracing, health)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI

from outbox.tracing import setup_tracing
from servicekit.errors import install_error_handlers
from servicekit.limits import BodySizeLimitMiddleware


def create_service_app(
    *,
    name: str,
    routers: list[APIRouter],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    max_body_bytes: int = 1_048_576,
) -> FastAPI:
    setup_tracing(name)
    app = FastAPI(title=name, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    for router in routers:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz")
    return app
