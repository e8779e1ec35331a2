from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from auth.deps import (
    ClientAddress,
    HasherDep,
    KeyringDep,
    RevocationsDep,
    SettingsDep,
    ThrottleDep,
    UowDep,
)
from auth.sessions.schemas import LoginRequest, RefreshRequest, TokenPair
from auth.sessions.service import SessionService
from servicekit.auth import CurrentToken
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api", tags=["sessions"])


def get_service(
    uow: UowDep,
    settings: SettingsDep,
    keyring: KeyringDep,
    hasher: HasherDep,
    throttle: ThrottleDep,
    revocations: RevocationsDep,
) -> SessionService:
    return SessionService(
        uow, settings=settings, keyring=keyring, hasher=hasher, throttle=throttle, revocations=revocations
    )


Service = Annotated[SessionService, Depends(get_service)]
_NO_STORE = {"Cache-Control": "no-store"}


@router.post("/login", responses=error_responses(401, 429))
async def login(
    body: LoginRequest, service: Service, address: ClientAddress, response: Response
) -> TokenPair:
    response.headers.update(_NO_STORE)
    return await service.login(
        email=body.email, password=body.password.get_secret_value(), client_address=address
    )


@router.post("/refresh-token", responses=error_responses(401))
async def refresh_token(body: RefreshRequest, service: Service, response: Response) -> TokenPair:
    """Rotates: the presented refresh token is spent; presenting it again revokes the whole session."""
    response.headers.update(_NO_STORE)
    return await service.refresh(body.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(token: CurrentToken, service: Service) -> None:
    """Revokes the session (refresh family) and denies this access token until it expires."""
    await service.logout(token)
