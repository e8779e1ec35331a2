"""Alembic environment for the auth database: DATABASE_URL first, then AUTH_DATABASE_URL / the default."""

from auth.models import Base
from auth.settings import DatabaseSettings
from servicekit import migrations_env

migrations_env.run(Base.metadata, settings_url=lambda: DatabaseSettings().database_url)
