from __future__ import annotations

from fastapi import APIRouter, status

from auth.deps import ClientAddress
from auth.password_reset import service
from auth.password_reset.schemas import Accepted, ResetConfirm, ResetRequest
from auth.request_context import ContextDep
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api/reset-password", tags=["password reset"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429))
async def request_reset(body: ResetRequest, ctx: ContextDep, address: ClientAddress) -> Accepted:
    """Always 202: whether the email has an account is not revealed."""
    await ctx.run(lambda uow: service.request(uow, ctx.resources, body.email, address))
    return Accepted()


@router.post("/confirm", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(400, 429))
async def confirm_reset(body: ResetConfirm, ctx: ContextDep, address: ClientAddress) -> None:
    """Sets the new password and revokes every session of the account."""
    await ctx.run(
        lambda uow: service.confirm(
            uow,
            ctx.resources,
            email=body.email,
            code=body.code,
            new_password=body.new_password.get_secret_value(),
            client_address=address,
        )
    )
