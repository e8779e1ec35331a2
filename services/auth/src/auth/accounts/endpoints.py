from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from auth.accounts.schemas import AccountOut, RegisterRequest
from auth.accounts.service import AccountService
from auth.deps import HasherDep, UowDep
from servicekit.auth import CurrentToken

router = APIRouter(prefix="/auth/api", tags=["accounts"])


def get_service(uow: UowDep, hasher: HasherDep) -> AccountService:
    return AccountService(uow, hasher)


Service = Annotated[AccountService, Depends(get_service)]


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: RegisterRequest, service: Service) -> AccountOut:
    account = await service.register(
        email=body.email, password=body.password.get_secret_value(), name=body.name
    )
    return AccountOut.model_validate(account, from_attributes=True)


@router.get("/me")
async def me(token: CurrentToken, service: Service) -> AccountOut:
    account = await service.get(token.account.id)
    return AccountOut.model_validate(account, from_attributes=True)
