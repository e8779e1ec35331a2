"""Field types shared by the feature schemas. Requests forbid unknown fields."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from auth.passwords import MAX_LENGTH

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def normalise_email(value: str) -> str:
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise ValueError("not a valid email address")
    return email


Email = Annotated[str, Field(max_length=320), AfterValidator(normalise_email)]
# SecretStr: a password never shows up in a repr, a log line or a validation error's input.
Password = Annotated[SecretStr, Field(min_length=1, max_length=MAX_LENGTH)]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)
