"""The error contract in every service's OpenAPI document: one `ErrorResponse` schema for every error
status an operation can answer, in the shape the services really send (`{"error": {code, message,
details}}`), replacing FastAPI's default `{"detail": [...]}` validation schema.

Each operation documents 422 and 503 (any request can be malformed; any can meet a database or Redis
outage), 413 when it takes a body, 404 when it has path parameters, 401 when it needs a token, plus what
its route declares with `error_responses(...)` (409, 429, 400).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

DESCRIPTIONS = {
    400: "the request is well formed but refused (e.g. a wrong or expired one-time code)",
    401: "missing, malformed, expired, revoked or forged bearer token (`WWW-Authenticate: Bearer`)",
    404: "no such resource, or not the caller's",
    409: "conflicts with the resource's current state",
    413: "request body too large, or the event it would publish is",
    422: "malformed request: the details list each field's problem",
    429: "throttled: `Retry-After` says when to try again",
    503: "a dependency (database, Redis, signing keys) is unavailable: retry after `Retry-After`",
}
EXAMPLES = {
    400: {"code": "invalid_reset_code", "message": "the code is wrong or expired"},
    401: {"code": "unauthorized", "message": "invalid or missing credentials"},
    404: {"code": "not_found", "message": "dataset 6f1c… not found"},
    409: {"code": "conflict", "message": "document 6f1c… is archived: un_archive it before editing it"},
    413: {"code": "payload_too_large", "message": "request body exceeds 1048576 bytes"},
    422: {
        "code": "validation_error",
        "message": "request is malformed",
        "details": [{"loc": ["body", "name"], "msg": "Field required", "type": "missing"}],
    },
    429: {"code": "too_many_requests", "message": "too many login attempts, retry later"},
    503: {"code": "unavailable", "message": "the database is unavailable: retry shortly"},
}


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable error code", examples=["not_found"])
    message: str = Field(description="what went wrong, for people; never contains secrets")
    details: Any = Field(default=None, description="structured details (validation errors, failed checks)")


class ErrorResponse(BaseModel):
    """Every error any service answers, whatever its status."""

    error: ErrorBody


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """For a route decorator's `responses=`: the statuses this route answers beyond the automatic ones."""
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in codes}


def _codes(operation: dict[str, Any]) -> set[int]:
    """What the operation can answer, read from the operation itself (FastAPI's route objects are wrapped
    in private types in recent versions; the document is the stable interface)."""
    codes = {422, 503}
    if "requestBody" in operation:
        codes.add(413)
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        codes.add(404)
    if operation.get("security"):  # the bearer scheme of servicekit.auth.current_token
        codes.add(401)
    return codes | {
        int(code) for code in operation.get("responses", {}) if code.isdigit() and int(code) >= 400
    }


def install_error_contract(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components["ErrorResponse"] = error_schema
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for code in sorted(_codes(operation)):
                    operation["responses"][str(code)] = {
                        "description": DESCRIPTIONS[code],
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                                "example": {"error": EXAMPLES[code]},
                            }
                        },
                    }
        _link_created_resources(schema.get("paths", {}))
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _link_created_resources(paths: dict[str, Any]) -> None:
    """OpenAPI links from each `POST /things` that answers 201 with an `id` to every operation under
    `/things/{thing_id}`: the created id feeds the new path parameter, the creator's own path parameters
    pass through. Clients (and a stateful fuzzer) can then walk from a creation to the resource."""
    for path, operations in paths.items():
        created = operations.get("post", {}).get("responses", {}).get("201")
        if created is None:
            continue
        links: dict[str, Any] = {}
        for target, target_operations in paths.items():
            if not target.startswith(path + "/{"):
                continue
            new_param, tail = target[len(path) + 2 :].split("}", 1)
            if re.search(r"\{\w*_id\}", tail):  # a deeper resource needs ids this creation does not give
                continue
            known = set(re.findall(r"\{(\w+)\}", path))
            for method, operation in target_operations.items():
                if "operationId" not in operation:
                    continue
                parameters = {
                    p["name"]: f"$request.path.{p['name']}"
                    for p in operation.get("parameters", [])
                    if p.get("in") == "path" and p["name"] in known
                }
                parameters[new_param] = "$response.body#/id"
                links[f"{method}:{target}"] = {
                    "operationId": operation["operationId"],
                    "parameters": parameters,
                }
        if links:
            created["links"] = links
