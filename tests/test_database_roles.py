"""Least privilege in PostgreSQL (servicekit.pgroles): a service's processes connect as `<service>_app`, which
may read and write rows and nothing else; its migrations run as `<service>_owner`, whose later tables the app
role can use without a new grant; a database migrated before the roles existed is handed to the owner."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from servicekit.pgroles import ServiceRoles, provision
from testsupport import PG_HOST, PG_PORT, PG_USER, ServiceDatabase, create_service_database, run_migrations

ROOT = Path(__file__).resolve().parent.parent
RUN = os.environ["TEST_RUN_ID"]


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def refused(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> str:
    """The error PostgreSQL answers `statement` with ('' when it ran)."""
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        return str(exc).splitlines()[0]
    return ""


@pytest.fixture(scope="module")
def console_db() -> Iterator[ServiceDatabase]:
    db = create_service_database(f"console_roles_{RUN}", "console")
    db.migrate(ROOT / "services" / "console" / "alembic.ini")
    yield db
    with psycopg.connect(libpq(db.admin_url).rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE "{db.name}" WITH (FORCE)')


def test_the_app_role_is_refused_ddl_and_everything_it_does_not_use(console_db: ServiceDatabase) -> None:
    with psycopg.connect(libpq(console_db.app_url), autocommit=True) as app:
        assert app.execute(
            "SELECT current_user, usesuper FROM pg_user WHERE usename = current_user"
        ).fetchone() == (
            "console_app",
            False,
        )
        assert "permission denied for schema public" in refused(app, "CREATE TABLE stolen (a int)")
        assert "must be owner of table inbox" in refused(app, "DROP TABLE inbox")
        assert "must be owner of table outbox" in refused(app, "ALTER TABLE outbox ADD COLUMN x int")
        assert "must be owner" in refused(app, "CREATE INDEX ix_stolen ON documents (name)")
        assert "permission denied for table outbox" in refused(app, "TRUNCATE outbox")
        assert "temporary tables" in refused(app, "CREATE TEMP TABLE scratch (a int)")
        assert "permission denied for database" in refused(app, "CREATE SCHEMA elsewhere")
        assert "permission denied for table alembic_version" in refused(
            app, "UPDATE alembic_version SET version_num = version_num"
        )
        assert "permission denied" in refused(
            app, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"
        )
        # What it does use: rows, sequences, LISTEN/NOTIFY, advisory locks, the outbox's ANALYZE function.
        with app.transaction():
            row_id = app.execute(
                "INSERT INTO outbox (event_id, topic, event_type, source, aggregate_id, aggregate_version, "
                "payload) VALUES (gen_random_uuid(), 't', 'e', 's', 'x', 1, '{}') RETURNING id"
            ).fetchone()
            assert row_id is not None
            app.execute("UPDATE outbox SET attempts = 1 WHERE id = %s", row_id)
            app.execute("SELECT * FROM outbox WHERE id = %s FOR UPDATE SKIP LOCKED", row_id)
            app.execute("DELETE FROM outbox WHERE id = %s", row_id)
            app.execute("SELECT pg_notify('outbox_pending', ''), pg_advisory_xact_lock(1)")
        app.execute("LISTEN outbox_pending")
        # ANALYZE of the outbox only through its owner's function (schema step 5): a plain one is skipped.
        app.execute("SELECT outbox_analyze()")


def test_tables_a_later_migration_creates_are_granted_by_default(console_db: ServiceDatabase) -> None:
    with psycopg.connect(libpq(console_db.owner_url), autocommit=True) as owner:
        owner.execute("CREATE TABLE later_feature (id bigserial PRIMARY KEY, note text)")
    try:
        with psycopg.connect(libpq(console_db.app_url), autocommit=True) as app:
            app.execute("INSERT INTO later_feature (note) VALUES ('granted by default')")
            assert app.execute("SELECT count(*) FROM later_feature").fetchone() == (1,)
            assert "must be owner" in refused(app, "DROP TABLE later_feature")
    finally:
        with psycopg.connect(libpq(console_db.owner_url), autocommit=True) as owner:
            owner.execute("DROP TABLE later_feature")


def test_a_database_migrated_as_the_superuser_is_handed_to_the_owner() -> None:
    """Local databases made before the roles existed: `make stack` adopts them, `make migrate` grants."""
    name = f"indexer_adopt_{RUN}"
    admin = make_conninfo(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    superuser_url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    ini = ROOT / "services" / "indexer" / "alembic.ini"
    run_migrations(ini, superuser_url)  # the old way: every object the superuser's
    roles = ServiceRoles.of("indexer")
    provision(admin, name, roles)
    owner_url = f"postgresql+psycopg://{roles.owner}@{PG_HOST}:{PG_PORT}/{name}"
    run_migrations(ini, owner_url, app_role=roles.app)
    with psycopg.connect(make_conninfo(admin, dbname=name)) as conn:
        others = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relowner <> %s::regrole",
            (roles.owner,),
        ).fetchall()
        assert others == []
    with psycopg.connect(make_conninfo(admin, dbname=name, user=roles.app)) as app:
        assert app.execute("SELECT count(*) FROM indexed_documents").fetchone() == (0,)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
