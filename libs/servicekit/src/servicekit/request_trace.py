"""From a request to its trace: the trace id on every response, and one access log line per request.

Every response of a traced request carries the W3C `traceresponse` header (`00-<trace-id>-<span-id>-<flags>`,
the server span) and `X-Trace-Id` (the bare trace id, for people and for the gateway's access log). They are
set by OpenTelemetry's ASGI middleware through its response-propagator hook, so they cover every answer it
wraps: the routes', the JSON errors of the handlers and of the body-limit and NUL middlewares, and the 500
of an unhandled exception. A request without a trace (no exporter configured and no incoming `traceparent`)
gets neither header; /healthz, /readyz and /metrics are not traced.

`AccessLogMiddleware` replaces uvicorn's access log (plain text even with LOG_FORMAT=json) with a line of
the process's own logging setup on `servicekit.access`: client, method, path without the query string
(search terms stay out of logs, as at the gateway), status, duration, request id, and the trace id and span
id that outbox.telemetry.logs adds to every line logged under a span. The request id is the gateway's `X-Request-ID`
when it is a short safe token, else one made here (and then returned in `X-Request-ID`); it is also the
server span's `request.id` attribute, which `outbox trace --request-id` filters on.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.propagators import ResponsePropagator, set_global_response_propagator
from opentelemetry.propagators.textmap import CarrierT, Setter, default_setter
from opentelemetry.trace import format_span_id, format_trace_id
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRACE_ID_HEADER = "X-Trace-Id"
REQUEST_ID_ATTRIBUTE = "request.id"
UNLOGGED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: DEBUG only
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the gateway's rule for a client's X-Request-ID

access_log = logging.getLogger("servicekit.access")


class TraceHeadersPropagator(ResponsePropagator):
    """`traceresponse` and `X-Trace-Id` from the server span (nothing when there is no valid span)."""

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        ctx = trace.get_current_span(context).get_span_context()
        if not ctx.is_valid:
            return
        trace_id = format_trace_id(ctx.trace_id)
        setter.set(
            carrier, "traceresponse", f"00-{trace_id}-{format_span_id(ctx.span_id)}-{ctx.trace_flags:02x}"
        )
        setter.set(carrier, TRACE_ID_HEADER, trace_id)
        setter.set(carrier, "Access-Control-Expose-Headers", f"traceresponse, {TRACE_ID_HEADER}")


def install_trace_headers() -> None:
    """Process-wide (the ASGI instrumentation reads one global response propagator)."""
    set_global_response_propagator(TraceHeadersPropagator())  # type: ignore[no-untyped-call]


def route_uvicorn_logs() -> None:
    """uvicorn's own lines through the root handler (so in the configured format), its access log off.

    Called from the app factory: uvicorn configured its loggers (own handlers, no propagation) before it
    loaded the app, whether started by servicekit.serve or by the `uvicorn` command."""
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()  # no handler: uvicorn skips formatting its access line at all
    uvicorn_access.propagate = False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class AccessLogMiddleware:
    """Outermost of the services' middlewares, inside OpenTelemetry's: the server span is current here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _header(scope, b"x-request-id")
        generated = request_id is None or not _SAFE_REQUEST_ID.fullmatch(request_id)
        if request_id is None or generated:
            request_id = uuid.uuid4().hex
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
        status = 500  # unless a response starts: an exception escaping the app becomes the 500
        started = time.perf_counter()

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if generated:
                    message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            self._log(scope, status, time.perf_counter() - started, request_id)

    @staticmethod
    def _log(scope: Scope, status: int, seconds: float, request_id: str) -> None:
        path: str = scope.get("path", "")
        level = logging.DEBUG if path in UNLOGGED_PATHS else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        client = scope.get("client")
        raw_path = scope.get("raw_path")  # as sent (still percent-encoded): no decoded %0A splits a line
        fields: dict[str, Any] = {
            "client": client[0] if client else "",
            "method": scope.get("method", ""),
            "path": bytes(raw_path).decode("latin-1") if raw_path else path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "request_id": request_id,
        }
        access_log.log(
            level,
            '%s "%s %s" %d %.1f ms request_id=%s',
            *fields.values(),
            extra=fields,
        )
