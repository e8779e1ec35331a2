"""Dify's email-code login: `POST /auth/api/email-code-login` (send a code), then
`POST /auth/api/email-code-login/validity` (exchange it for tokens)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from auth.deps import ClientAddress
from auth.email_login import service
from auth.email_login.schemas import EmailCodeExchange, EmailCodeRequest, EmailCodeSent
from auth.request_context import ContextDep
from auth.sessions.endpoints import token_pair
from auth.sessions.schemas import TokenPair
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api/email-code-login", tags=["email-code login"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429))
async def request_code(
    body: EmailCodeRequest, ctx: ContextDep, address: ClientAddress, response: Response
) -> EmailCodeSent:
    """Always 202 with a token: whether the email has an account is not revealed. The code goes out by
    mail; the exchange presents it with this token."""
    response.headers["Cache-Control"] = "no-store"
    token = await ctx.run(lambda uow: service.request(uow, ctx.resources, body.email, address))
    return EmailCodeSent(token=token)


@router.post("/validity", responses=error_responses(400, 429))
async def exchange_code(
    body: EmailCodeExchange, ctx: ContextDep, address: ClientAddress, response: Response
) -> TokenPair:
    """The same tokens as a password login; the code is spent. 400 for a wrong, expired, spent or
    cancelled code, or one that is not the token's."""
    response.headers["Cache-Control"] = "no-store"
    return token_pair(
        await ctx.run(
            lambda uow: service.exchange(uow, ctx.resources, body.email, body.code, body.token, address)
        )
    )
