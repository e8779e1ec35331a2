from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from auth.accounts.schemas import AccountOut, RegisterRequest
from auth.accounts.service import AccountService
from auth.deps import ClientAddress, HasherDep, SettingsDep, ThrottleDep, UowDep
from servicekit.auth import CurrentToken
from servicekit.openapi import error_responses

router = APIRouter(prefix="/auth/api", tags=["accounts"])


def get_service(
    uow: UowDep, hasher: HasherDep, throttle: ThrottleDep, settings: SettingsDep
) -> AccountService:
    return AccountService(uow, hasher, throttle, settings)


Service = Annotated[AccountService, Depends(get_service)]


@router.post("/register", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 429))
async def register(body: RegisterRequest, service: Service, address: ClientAddress) -> AccountOut:
    account = await service.register(
        email=body.email, password=body.password.get_secret_value(), name=body.name, client_address=address
    )
    return AccountOut.model_validate(account, from_attributes=True)


@router.get("/me")
async def me(token: CurrentToken, service: Service, response: Response) -> AccountOut:
    response.headers["Cache-Control"] = "no-store"  # personal data: no shared or browser cache keeps it
    account = await service.get(token.account.id)
    return AccountOut.model_validate(account, from_attributes=True)
