from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from auth.schemas import Email, Password, RequestModel


class LoginRequest(RequestModel):
    email: Email
    password: Password


class RefreshRequest(RequestModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=256)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
