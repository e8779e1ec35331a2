"""Alembic environment for the console database: DATABASE_URL (the owner role), else the local stack's
console_owner."""

from console.models import Base
from servicekit import idempotency, migrations_env

migrations_env.run(Base.metadata, idempotency.metadata, service="console")
