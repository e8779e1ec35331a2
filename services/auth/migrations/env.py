"""Alembic environment for the auth database: DATABASE_URL (the owner role), else the local stack's auth_owner."""

from auth.models import Base
from servicekit import migrations_env

migrations_env.run(Base.metadata, service="auth")
