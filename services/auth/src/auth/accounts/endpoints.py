from __future__ import annotations

from fastapi import APIRouter, Response, status

from auth.accounts import service
from auth.accounts.schemas import AccountOut, RegisterRequest
from auth.deps import ClientAddress
from auth.request_context import ContextDep
from servicekit.auth import CurrentToken
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api", tags=["accounts"])


@router.post("/register", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 429))
async def register(body: RegisterRequest, ctx: ContextDep, address: ClientAddress) -> AccountOut:
    account = await ctx.run(
        lambda uow: service.register(
            uow,
            ctx.resources,
            email=body.email,
            password=body.password.get_secret_value(),
            name=body.name,
            client_address=address,
        )
    )
    return AccountOut.model_validate(account, from_attributes=True)


@router.get("/me")
async def me(token: CurrentToken, ctx: ContextDep, response: Response) -> AccountOut:
    response.headers["Cache-Control"] = "no-store"  # personal data: no shared or browser cache keeps it
    account = await ctx.run(lambda uow: service.get(uow, token.account.id))
    return AccountOut.model_validate(account, from_attributes=True)
