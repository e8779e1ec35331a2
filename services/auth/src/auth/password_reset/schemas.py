from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from auth.accounts.schemas import check_strength
from auth.schemas import Email, Password, RequestModel


class ResetRequest(RequestModel):
    email: Email


class ResetConfirm(RequestModel):
    email: Email
    code: Annotated[str, Field(min_length=1, max_length=32)]
    new_password: Password

    _strong = field_validator("new_password")(check_strength)


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"
