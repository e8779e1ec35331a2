from __future__ import annotations

from typing import Annotated

from pydantic import Field

from auth.schemas import Email, RequestModel


class EmailCodeRequest(RequestModel):
    email: Email


class EmailCodeExchange(RequestModel):
    email: Email
    code: Annotated[str, Field(min_length=1, max_length=16, examples=["042117"])]
