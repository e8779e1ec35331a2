"""Alembic environment for the indexer database: DATABASE_URL (the owner role), else the local stack's
indexer_owner."""

from indexer.models import Base
from servicekit import migrations_env

migrations_env.run(Base.metadata, service="indexer")
