"""The one rule for turning a PostgreSQL URL into the SQLAlchemy URL the library uses (psycopg 3)."""

from __future__ import annotations

_DRIVERLESS = ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+asyncpg://")


def psycopg_url(url: str) -> str:
    """Accept libpq (`postgres://`, `postgresql://`) and other drivers' URLs; pin the psycopg 3 driver."""
    for prefix in _DRIVERLESS:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
