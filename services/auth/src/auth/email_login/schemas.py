from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from auth.schemas import Email, RequestModel

# What the request returns and the exchange presents: secrets.token_urlsafe(24) is 32 characters.
CodeToken = Annotated[str, Field(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class EmailCodeRequest(RequestModel):
    email: Email


class EmailCodeSent(BaseModel):
    """Always this shape, whether or not the email has an account."""

    status: Literal["accepted"] = "accepted"
    token: str


class EmailCodeExchange(RequestModel):
    email: Email
    code: Annotated[str, Field(min_length=1, max_length=16, examples=["042117"])]
    token: CodeToken
