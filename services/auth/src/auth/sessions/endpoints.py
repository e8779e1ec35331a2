from __future__ import annotations

from fastapi import APIRouter, Response, status

from auth.deps import ClientAddress
from auth.request_context import ContextDep
from auth.sessions import service
from auth.sessions.schemas import LoginRequest, RefreshRequest, TokenPair
from auth.sessions.tokens import IssuedTokens
from servicekit.auth import CurrentToken
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api", tags=["sessions"])
_NO_STORE = {"Cache-Control": "no-store"}


def token_pair(tokens: IssuedTokens) -> TokenPair:
    return TokenPair(
        access_token=tokens.access_token, refresh_token=tokens.refresh_token, expires_in=tokens.expires_in
    )


@router.post("/login", responses=error_responses(401, 429))
async def login(body: LoginRequest, ctx: ContextDep, address: ClientAddress, response: Response) -> TokenPair:
    response.headers.update(_NO_STORE)
    tokens = await ctx.run(
        lambda uow: service.login(
            uow,
            ctx.resources,
            email=body.email,
            password=body.password.get_secret_value(),
            client_address=address,
        )
    )
    return token_pair(tokens)


@router.post("/refresh-token", responses=error_responses(401))
async def refresh_token(body: RefreshRequest, ctx: ContextDep, response: Response) -> TokenPair:
    """Rotates: the presented refresh token is spent; presenting it again revokes the whole session."""
    response.headers.update(_NO_STORE)
    return token_pair(await ctx.run(lambda uow: service.refresh(uow, ctx.resources, body.refresh_token)))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(token: CurrentToken, ctx: ContextDep) -> None:
    """Revokes the session (refresh family) and denies this access token until it expires."""
    await ctx.run(lambda uow: service.logout(uow, ctx.resources, token))
