from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from auth.deps import ClientAddress, CodesDep, HasherDep, SettingsDep, ThrottleDep, UowDep
from auth.password_reset.schemas import Accepted, ResetConfirm, ResetRequest
from auth.password_reset.service import PasswordResetService
from auth.sessions.endpoints import get_service as get_session_service
from auth.sessions.service import SessionService
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api/reset-password", tags=["password reset"])


def get_service(
    uow: UowDep,
    settings: SettingsDep,
    hasher: HasherDep,
    codes: CodesDep,
    throttle: ThrottleDep,
    sessions: Annotated[SessionService, Depends(get_session_service)],
) -> PasswordResetService:
    return PasswordResetService(
        uow, settings=settings, hasher=hasher, codes=codes, throttle=throttle, sessions=sessions
    )


Service = Annotated[PasswordResetService, Depends(get_service)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429))
async def request_reset(body: ResetRequest, service: Service, address: ClientAddress) -> Accepted:
    """Always 202: whether the email has an account is not revealed."""
    await service.request(body.email, address)
    return Accepted()


@router.post("/confirm", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(400, 429))
async def confirm_reset(body: ResetConfirm, service: Service, address: ClientAddress) -> None:
    """Sets the new password and revokes every session of the account."""
    await service.confirm(
        email=body.email,
        code=body.code,
        new_password=body.new_password.get_secret_value(),
        client_address=address,
    )
