"""Alembic environment for the console database: DATABASE_URL first, then CONSOLE_DATABASE_URL / the default."""

from console.models import Base
from console.settings import Settings
from servicekit import idempotency, migrations_env

migrations_env.run(Base.metadata, idempotency.metadata, settings_url=lambda: Settings().database_url)
