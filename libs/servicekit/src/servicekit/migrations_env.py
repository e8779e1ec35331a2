"""The body of every service's Alembic `env.py`: one database per service, URL from DATABASE_URL first,
then the service's own settings; the service's tables and the outbox library's in the target metadata."""

from __future__ import annotations

import os
from collections.abc import Callable
from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData, create_engine, pool

import outbox
from servicekit.db import normalise_url


def run(*service_metadata: MetaData, settings_url: Callable[[], str]) -> None:
    config = context.config
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = normalise_url(os.environ.get("DATABASE_URL") or settings_url())
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
    finally:
        engine.dispose()
