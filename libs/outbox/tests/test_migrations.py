"""The versioned DDL and `schema.metadata` describe the same tables (what Alembic would autogenerate)."""

from __future__ import annotations

import os

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from outbox import metadata, migrations
from testsupport import recreate_database


def test_versioned_ddl_matches_metadata() -> None:
    url = recreate_database(f"outbox_lib_migrations_test_{os.environ['TEST_RUN_ID']}")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            migrations.upgrade_all(conn)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        with engine.begin() as conn:
            migrations.downgrade_all(conn)
            left = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar_one()
        assert left == 0
    finally:
        engine.dispose()
