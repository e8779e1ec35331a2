"""Test support against real infrastructure, for every test in the repository (never imported by production code).

- `testsupport` (this module): fresh databases, migrations, service processes on free ports, polling.
- `testsupport.kafka`: publish an event by hand in the relay's envelope; wait until a group consumed it.
- `testsupport.tokens`: a stand-in token issuer (Ed25519 key, JWKS over real HTTP) for service tests.
- `testsupport.broker`, `testsupport.tcp_proxy`: dedicated Tansu brokers, one behind a TCP proxy whose
  connections can be cut (fault injection).
- `testsupport.tls`, `testsupport.kafka_gate`: a throwaway CA; a listener enforcing TLS and SASL in front of
  a Tansu broker (which enforces neither), for the clients' security settings.
"""

from testsupport.ports import free_port
from testsupport.processes import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    HttpService,
    ServiceDatabase,
    ServiceProcess,
    create_service_database,
    database_url,
    recreate_database,
    run_migrations,
    wait_until,
)

__all__ = [
    "PG_HOST",
    "PG_PORT",
    "PG_USER",
    "HttpService",
    "ServiceDatabase",
    "ServiceProcess",
    "create_service_database",
    "database_url",
    "free_port",
    "recreate_database",
    "run_migrations",
    "wait_until",
]
