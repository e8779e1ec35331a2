"""The body of every service's Alembic `env.py`: one database per service, URL from DATABASE_URL, else the
local stack's `<service>_owner` URL; the service's tables and the outbox library's in the target metadata.

Migrations run as the database's owner role (servicekit.pgroles). With DATABASE_APP_ROLE set, the same
transaction then grants that role what the service's processes need on every object, and by default on
whatever later migrations create. DATABASE_URL and DATABASE_PASSWORD may each be a file (`_FILE`).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData, create_engine, pool

import outbox
from outbox.env_settings import env_or_file, with_password
from servicekit.db import normalise_url
from servicekit.pgroles import grant_to_app
from servicekit.settings import local_database_url


def run(*service_metadata: MetaData, service: str) -> None:
    config = context.config
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = normalise_url(env_or_file("DATABASE_URL") or local_database_url(service, role="owner"))
    url = with_password(url, env_or_file("DATABASE_PASSWORD"), setting="DATABASE_PASSWORD")
    app_role = os.environ.get("DATABASE_APP_ROLE")
    target = [*service_metadata, outbox.metadata]
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target)
            with context.begin_transaction():
                context.run_migrations()
                if app_role:
                    grant_to_app(connection, app_role)
    finally:
        engine.dispose()
