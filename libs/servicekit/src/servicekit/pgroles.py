"""Least privilege in PostgreSQL: per service an owner role that runs the migrations and owns every object,
and an application role its API, relay and consumer connect as, with only what they use.

    <service>_owner   LOGIN; owns the database, schema public and every object in it; nothing cluster-wide
    <service>_app     LOGIN, CONNECT to its database, USAGE on public, SELECT/INSERT/UPDATE/DELETE on the
                      tables (SELECT only on alembic_version), USAGE on the sequences, EXECUTE on the
                      functions (the outbox's SECURITY DEFINER `outbox_analyze()`); no CREATE anywhere, no
                      TEMP, no TRUNCATE, no DDL, not a superuser

Two halves, run by different roles:
- `provision` (a superuser or CREATEROLE administrator): the roles, the database owned by the owner, PUBLIC's
  default rights on the database and schema revoked, objects an earlier set-up created as another role
  handed to the owner. `make stack`, the tests' databases and compose's `<service>-db-roles` job run it.
- `grant_to_app` (the owner, right after `alembic upgrade head`; servicekit.migrations_env): grants on what
  exists and ALTER DEFAULT PRIVILEGES for what later migrations create.

    python -m servicekit.pgroles --service auth [--database auth]   # compose's job; libpq's PG* variables,
        # the administrator's password from PGADMIN_PASSWORD(_FILE), the roles' from
        # <SERVICE>_OWNER_PASSWORD(_FILE) and <SERVICE>_APP_PASSWORD(_FILE) (local trust auth: none)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import psycopg
from psycopg import sql
from sqlalchemy import Connection, text

from outbox.env_settings import SettingError, env_or_file

SCHEMA = "public"
# Roles are cluster-wide: concurrent test sessions provisioning the same roles take turns (pg_authid rows
# updated by two transactions at once fail with "tuple concurrently updated").
_LOCK = 0x6F7574626F78  # "outbox"
_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


@dataclass(frozen=True, slots=True)
class ServiceRoles:
    owner: str
    app: str

    @classmethod
    def of(cls, service: str) -> ServiceRoles:
        return cls(owner=f"{service}_owner", app=f"{service}_app")


def provision(
    conninfo: str,
    database: str,
    roles: ServiceRoles,
    *,
    owner_password: str | None = None,
    app_password: str | None = None,
) -> None:
    """Idempotent: create or correct the roles (and set their passwords when given), create the database
    owned by the owner or hand an existing one to it, and leave PUBLIC no rights in it."""
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            for role, password in ((roles.owner, owner_password), (roles.app, app_password)):
                exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                statement = sql.SQL("{verb} ROLE {role} " + _ROLE_ATTRIBUTES + "{password}").format(
                    verb=sql.SQL("ALTER" if exists else "CREATE"),
                    role=sql.Identifier(role),
                    password=sql.SQL(" PASSWORD {}").format(sql.Literal(password))
                    if password
                    else sql.SQL(""),
                )
                admin.execute(statement)
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
        db, owner, app = sql.Identifier(database), sql.Identifier(roles.owner), sql.Identifier(roles.app)
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, owner))
        else:
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, owner))
        # PUBLIC may CONNECT and create TEMP tables in a new database by default: only the app connects.
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, app))
    with psycopg.connect(conninfo, dbname=database, autocommit=True) as conn:
        schema = sql.Identifier(SCHEMA)
        conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(schema, owner))
        # Before PostgreSQL 15 PUBLIC may CREATE in schema public; from 15 on this changes nothing.
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, app))
        for adoption in _adoptions(conn, roles.owner):
            conn.execute(adoption)


def _adoptions(conn: psycopg.Connection[tuple[object, ...]], owner: str) -> list[sql.Composed]:
    """ALTER ... OWNER TO owner for every object in the schema another role owns: databases migrated before
    the roles existed (as the superuser) keep working, and the owner can grant on everything."""
    rows = conn.execute(
        """
        SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                              WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, c.oid::regclass::text
        FROM pg_class c
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND c.relowner <> %(owner)s::regrole
          -- a column's sequence follows its table
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
        UNION ALL
        SELECT 'FUNCTION', p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = %(schema)s::regnamespace AND p.proowner <> %(owner)s::regrole
        UNION ALL
        SELECT 'TYPE', t.oid::regtype::text FROM pg_type t
        WHERE t.typnamespace = %(schema)s::regnamespace AND t.typtype IN ('e', 'd')
          AND t.typowner <> %(owner)s::regrole
        """,
        {"schema": SCHEMA, "owner": owner},
    ).fetchall()
    return [
        sql.SQL("ALTER {kind} {name} OWNER TO {owner}").format(
            kind=sql.SQL(str(kind)), name=sql.SQL(str(name)), owner=sql.Identifier(owner)
        )
        for kind, name in rows
    ]


def grant_to_app(connection: Connection, app_role: str, *, version_table: str = "alembic_version") -> None:
    """As the owner, in the migration's transaction: the app role's rights on every object the owner has
    created, and by default on every one it creates later (ALTER DEFAULT PRIVILEGES applies to objects the
    *owner* creates: migrations must run as the owner)."""
    preparer = connection.dialect.identifier_preparer
    app, schema = preparer.quote(app_role), preparer.quote(SCHEMA)
    for statement in (
        f"GRANT USAGE ON SCHEMA {schema} TO {app}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {app}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {app}",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE ON SEQUENCES TO {app}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT EXECUTE ON FUNCTIONS TO {app}",
        # Functions are executable by PUBLIC by default: only the app role may run the owner's.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC",
        # The migrations' bookkeeping is the owner's alone.
        f"REVOKE INSERT, UPDATE, DELETE ON {schema}.{preparer.quote(version_table)} FROM {app}",
    ):
        connection.execute(text(statement))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servicekit.pgroles", description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True, help="auth, console, indexer: names the roles")
    parser.add_argument("--database", help="default: the service's name")
    parser.add_argument("--owner", help="default: <service>_owner")
    parser.add_argument("--app", help="default: <service>_app")
    args = parser.parse_args(argv)
    default = ServiceRoles.of(args.service)
    roles = ServiceRoles(owner=args.owner or default.owner, app=args.app or default.app)
    prefix = args.service.upper()
    try:
        admin_password = env_or_file("PGADMIN_PASSWORD")
        owner_password = env_or_file(f"{prefix}_OWNER_PASSWORD")
        app_password = env_or_file(f"{prefix}_APP_PASSWORD")
    except SettingError as exc:
        print(f"pgroles: {exc}", file=sys.stderr)
        return 2
    # The rest of the administrator's connection comes from libpq's PGHOST/PGPORT/PGUSER/PGSSLMODE.
    conninfo = psycopg.conninfo.make_conninfo(dbname="postgres", password=admin_password or None)
    provision(
        conninfo,
        args.database or args.service,
        roles,
        owner_password=owner_password,
        app_password=app_password,
    )
    print(f"pgroles: {args.database or args.service}: owner {roles.owner}, app {roles.app}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
