"""`create_service_app`: the shared shape of a service's FastAPI app (errors, body limit, tracing, health)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from outbox import OutboxWriter
from outbox.telemetry.logs import configure_logging
from outbox.telemetry.metrics import setup_metrics
from outbox.telemetry.tracing import setup_tracing, tracing_configured
from servicekit.auth import TokenVerifier
from servicekit.db import Database
from servicekit.errors import install_error_handlers
from servicekit.limits import BodySizeLimitMiddleware
from servicekit.metrics import MetricsSources
from servicekit.nul import NulRejectMiddleware
from servicekit.openapi import install_error_contract
from servicekit.readiness import readiness
from servicekit.request_trace import AccessLogMiddleware, install_trace_headers, route_uvicorn_logs


def instrument_clients() -> None:
    """Redis calls (deny list, throttles) and outgoing HTTP (the JWKS fetch) as client spans, when spans
    are exported at all; each instrumentor patches its library once per process."""
    if not tracing_configured():
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (RedisInstrumentor(), HTTPXClientInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def create_service_app(
    *,
    name: str,
    routers: list[APIRouter],
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    max_body_bytes: int = 1_048_576,
    consumer_groups: Mapping[str, Sequence[str]] | None = None,
) -> FastAPI:
    # The stable HTTP semantic conventions (http.server.request.duration in s, not the old
    # http.server.duration in ms): read once per process, when the first instrumentor initialises, so set
    # before any (the Redis/httpx client instrumentors below included).
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    setup_tracing(name)
    instrument_clients()
    if not logging.getLogger().handlers:  # a service that configured its own logging (auth) keeps it
        configure_logging(name)
    route_uvicorn_logs()
    install_trace_headers()
    setup_metrics(name)
    app = FastAPI(title=name, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(NulRejectMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)  # size before content
    app.add_middleware(AccessLogMiddleware)  # outermost: logs the other middlewares' refusals too
    for router in routers:
        app.include_router(router)
    install_error_contract(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/readyz", readiness, methods=["GET"], include_in_schema=False)

    sources = MetricsSources(name, consumer_groups or {})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        body, content_type = await sources.render(request.state)
        return Response(body, media_type=content_type)

    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # The server span and its children (SQL, Redis, HTTP clients, outbox events); not the ASGI layer's
    # `http receive` / `http send` spans (three more per request, carrying nothing the server span lacks).
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
    )
    return app


def create_database_service_app(
    *,
    name: str,
    routers: list[APIRouter],
    database_url: str,
    pool_size: int,
    max_body_bytes: int,
    consumer_groups: Mapping[str, Sequence[str]] | None = None,
    maintenance: Sequence[Callable[[Database], Coroutine[Any, Any, None]]] = (),
) -> FastAPI:
    """A service that owns a database and verifies tokens: lifespan state `db` (Database with this
    service's OutboxWriter) and `token_verifier`, both disposed on shutdown. `maintenance` loops (e.g.
    purging old idempotency keys) run as tasks for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        db = Database(database_url, OutboxWriter(source=name), pool_size=pool_size)
        tasks = [asyncio.create_task(job(db)) for job in maintenance]
        try:
            async with TokenVerifier.from_settings() as verifier:
                # Lifespan state: request.state.db and request.state.token_verifier in dependencies.
                yield {"db": db, "token_verifier": verifier}
        finally:
            for task in tasks:
                task.cancel()
            await db.dispose()

    return create_service_app(
        name=name,
        routers=routers,
        lifespan=lifespan,
        max_body_bytes=max_body_bytes,
        consumer_groups=consumer_groups,
    )
