"""Secrets as files: every secret setting `<PREFIX><FIELD>` may be given as `<PREFIX><FIELD>_FILE` instead,
the path of a file holding it (Compose `secrets:`, Kubernetes secret volumes).

pydantic-settings' own `secrets_dir` is not the same: it reads `<dir>/<variable name>` from one directory for
every field, so the file's name is fixed and a variable set beside it silently wins. Here the variable names
the file, only the fields a settings class lists as secret are read this way, and setting both (or naming an
unreadable file) stops the process with an error naming the variable (`outbox.env_settings.env_or_file`).

    class Settings(SecretFileSettings):
        model_config = SettingsConfigDict(env_prefix="AUTH_")
        secret_fields: ClassVar[tuple[str, ...]] = ("key_encryption_key",)
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from outbox.env_settings import SettingError, env_or_file, with_password

__all__ = ["SecretFileSettings", "SecretFilesSource", "SettingError", "env_or_file", "with_password"]


class SecretFilesSource(PydanticBaseSettingsSource):
    """The listed fields' values from `<PREFIX><FIELD>_FILE`; a field without one is left to the others."""

    def __init__(self, settings_cls: type[BaseSettings], fields: tuple[str, ...]) -> None:
        super().__init__(settings_cls)
        self.fields = fields

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix") or "")
        values: dict[str, Any] = {}
        for field in self.fields:
            name = f"{prefix}{field}".upper()
            value = env_or_file(name)  # raises when both are set or the file is unreadable
            if os.environ.get(f"{name}_FILE"):
                values[field] = value
        return values


class SecretFileSettings(BaseSettings):
    """Settings whose `secret_fields` can come from files (`<PREFIX><FIELD>_FILE`)."""

    secret_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = SecretFilesSource(settings_cls, cls.secret_fields)
        return init_settings, env_settings, files, dotenv_settings, file_secret_settings
