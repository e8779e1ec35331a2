"""Alembic environment for the indexer database: DATABASE_URL first, then INDEXER_DATABASE_URL / the default."""

from indexer.models import Base
from indexer.settings import Settings
from servicekit import migrations_env

migrations_env.run(Base.metadata, settings_url=lambda: Settings().database_url)
