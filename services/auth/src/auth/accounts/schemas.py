from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator

from auth.passwords import strength_problem
from auth.schemas import Email, Password, RequestModel


def check_strength(password: SecretStr, info: ValidationInfo) -> SecretStr:
    email = info.data.get("email")
    problem = strength_problem(password.get_secret_value(), email=email if isinstance(email, str) else None)
    if problem:
        raise ValueError(problem)
    return password


class RegisterRequest(RequestModel):
    email: Email
    password: Password
    name: Annotated[str, Field(min_length=1, max_length=100)]

    _strong = field_validator("password")(check_strength)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("name must not be blank")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):  # CR/LF would reach mail headers
            raise ValueError("name must not contain control characters (line breaks, tabs, NUL)")
        return value


class AccountOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    created_at: datetime
