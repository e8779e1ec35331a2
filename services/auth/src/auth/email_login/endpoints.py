"""Dify's email-code login: `POST /auth/api/email-code-login` (send a code), then
`POST /auth/api/email-code-login/validity` (exchange it for tokens)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from redis.asyncio import Redis

from auth.deps import ClientAddress, CodesDep, SettingsDep, ThrottleDep, UowDep
from auth.email_login.schemas import EmailCodeExchange, EmailCodeRequest
from auth.email_login.service import EmailLoginService
from auth.password_reset.schemas import Accepted
from auth.sessions.endpoints import get_service as get_session_service
from auth.sessions.schemas import TokenPair
from auth.sessions.service import SessionService
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api/email-code-login", tags=["email-code login"])


def get_service(
    request: Request,
    uow: UowDep,
    settings: SettingsDep,
    codes: CodesDep,
    throttle: ThrottleDep,
    sessions: Annotated[SessionService, Depends(get_session_service)],
) -> EmailLoginService:
    redis: Redis = request.state.redis
    return EmailLoginService(
        uow, settings=settings, redis=redis, codes=codes, throttle=throttle, sessions=sessions
    )


Service = Annotated[EmailLoginService, Depends(get_service)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429))
async def request_code(body: EmailCodeRequest, service: Service, address: ClientAddress) -> Accepted:
    """Always 202: whether the email has an account is not revealed. The code goes out by mail."""
    await service.request(body.email, address)
    return Accepted()


@router.post("/validity", responses=error_responses(400, 429))
async def exchange_code(
    body: EmailCodeExchange, service: Service, address: ClientAddress, response: Response
) -> TokenPair:
    """The same tokens as a password login; the code is spent."""
    response.headers["Cache-Control"] = "no-store"
    return await service.exchange(body.email, body.code, address)
