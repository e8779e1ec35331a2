from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from auth.deps import ResourcesDep

router = APIRouter(prefix="/auth/.well-known", tags=["keys"])


@router.get("/jwks.json")
async def jwks(resources: ResourcesDep, response: Response) -> dict[str, list[dict[str, Any]]]:
    """Public signing keys: the active one and retired ones whose tokens may still be valid."""
    # Verifiers cache on their own and refetch on an unknown kid; a short shared-cache lifetime suffices.
    response.headers["Cache-Control"] = "public, max-age=60"
    return await resources.keyring.jwks()
