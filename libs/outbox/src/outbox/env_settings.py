"""Settings from the environment, one place for defaults: the dataclass's own.

Every field of a settings dataclass can be set as `<PREFIX><FIELD>` (e.g. `OUTBOX_RELAY_BATCH_SIZE`),
or under the name a mapping gives it (names shared by several parts, like `OUTBOX_RETENTION_HOURS`). An
unset variable leaves the field's default. Values are parsed by the field's type: int, float, bool
(`1/true/yes/on`), str, `str | None` (empty: None), `timedelta` (hours: the variables end in `_HOURS`).

Why not pydantic-settings: the library's one required dependency is the OpenTelemetry API; pydantic would
add a compiled package to every user to parse a dozen numbers, and these settings are frozen dataclasses
that tests build and `dataclasses.replace` freely.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(ValueError):
    """An environment variable that does not parse as its setting's type."""


def env_name(prefix: str, field: str, names: Mapping[str, str]) -> str:
    return names.get(field, prefix + field.upper())


def from_env(cls: type[T], prefix: str, names: Mapping[str, str] | None = None, **fixed: Any) -> T:
    """`cls(**fixed, **every field whose variable is set)`."""
    names = names or {}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(fixed)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = env_name(prefix, field.name, names)
        if field.name in fixed or name not in os.environ:
            continue
        values[field.name] = _parse(name, os.environ[name], hints[field.name])
    return cls(**values)


def _parse(name: str, raw: str, kind: Any) -> Any:
    optional = False
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional, kind = True, args[0]
    value = raw.strip()
    if optional and not value:
        return None
    try:
        if kind is bool:
            if value.lower() not in _TRUE | _FALSE:
                raise ValueError(value)
            return value.lower() in _TRUE
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is timedelta:
            return timedelta(hours=float(value))
        return value
    except ValueError as exc:
        raise SettingError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


def env_or_file(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret `name`: its variable, or the contents of the file `<name>_FILE` names (Compose and
    Kubernetes mount secrets as files, which keeps them out of `docker inspect`, /proc/*/environ and crash
    reports); None when neither is set. One trailing newline is dropped. Both set, or a file that cannot be
    read, is a SettingError naming the variable. An empty variable counts as unset."""
    env = os.environ if environ is None else environ
    path = env.get(f"{name}_FILE")
    if not path:
        return env.get(name)
    if env.get(name):
        raise SettingError(f"{name} and {name}_FILE are both set: set one of them")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingError(f"{name}_FILE={path!r} cannot be read: {exc.strerror or exc}") from None
    return text.removesuffix("\n").removesuffix("\r")


def with_password(url: str, password: str | None, *, setting: str = "password") -> str:
    """`url` (PostgreSQL or Redis) with `password` set in it; `url` unchanged when there is none. A URL that
    already carries a password is refused: the two would disagree sooner or later."""
    if not password:
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password:
        raise SettingError(f"{setting} is set and the URL carries a password too: keep one")
    return parsed.set(password=password).render_as_string(hide_password=False)
