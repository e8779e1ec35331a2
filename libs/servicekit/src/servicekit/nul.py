"""Refuse NUL characters anywhere in a request (path, query, JSON body) with 422, as pure ASGI middleware.

PostgreSQL can store NUL in neither text nor JSON strings, so such input would otherwise reach the database
and come back as a 500. One check here covers every route, body field and parameter of every service.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicekit.errors import error_body, send_json_error

# A JSON \u0000 escape that is not itself escaped (an odd number of backslashes before the `u`).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_nul(body: bytes) -> bool:
    return b"\x00" in body or (b"\\u0000" in body and _JSON_NUL.search(body) is not None)


class NulRejectMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query: bytes = scope.get("query_string", b"")
        if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
            await self._refuse(send, "path or query")
            return
        chunks: list[bytes] = []
        messages: list[Message] = []
        while True:  # the body limit middleware in front has already bounded its size
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if has_nul(b"".join(chunks)):
            await self._refuse(send, "body")
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, where: str) -> None:
        message = f"request {where} contains a NUL character, which no field accepts"
        details = [{"loc": [where.split()[0]], "msg": "NUL character", "type": "value_error"}]
        await send_json_error(send, 422, error_body("validation_error", message, details))
