"""The library's clients through a listener that enforces TLS and SASL (testsupport.kafka_gate in front of
a dedicated Tansu broker; Tansu 0.6.0 enforces neither itself, tests/e2e/README.md): what works, and the
one error each refusal gives. The whole system under SASL_SSL is tests/e2e/test_kafka_security.py."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.kafka import ensure_topics, start_producer
from outbox.kafka.clients import KafkaAccessRefused, KafkaAdmin, KafkaConsumer, start_with_backoff
from outbox.kafka.connection import KafkaConnection
from testsupport.kafka_gate import SecureBroker
from testsupport.tls import TestPki

USER, PASSWORD = "outbox-relay", "correct horse"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure(pki: TestPki) -> Iterator[SecureBroker]:
    with SecureBroker(users={USER: PASSWORD}, pki=pki, mechanisms=("SCRAM-SHA-512", "SCRAM-SHA-256")) as b:
        yield b


def sasl_ssl(pki: TestPki, **overrides: str) -> dict[str, str]:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CAFILE": str(pki.ca),
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


async def refusal(bootstrap: str, env: dict[str, str]) -> str:
    admin = KafkaAdmin(bootstrap_servers=bootstrap, connection=KafkaConnection.from_env(env))
    with pytest.raises(KafkaAccessRefused) as raised:
        await admin.start()
    return str(raised.value.args[0])


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256"])
async def test_produce_and_consume_over_sasl_ssl(
    secure: SecureBroker, pki: TestPki, monkeypatch: pytest.MonkeyPatch, mechanism: str
) -> None:
    """The library's own helpers (ensure_topics, start_producer) pick the settings up from the environment."""
    for name, value in sasl_ssl(pki, KAFKA_SASL_MECHANISM=mechanism).items():
        monkeypatch.setenv(name, value)
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    await ensure_topics(secure.bootstrap, [topic], partitions=1)
    producer = await start_producer(secure.bootstrap)
    try:
        await producer.send_and_wait(topic, b"over TLS, authenticated", key=b"k")
    finally:
        await producer.stop()
    consumer = KafkaConsumer(topic, bootstrap_servers=secure.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        assert [r.value for records in batch.values() for r in records] == [b"over TLS, authenticated"]
    finally:
        await consumer.stop()
    assert USER in secure.gate.authenticated


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"KAFKA_SASL_PASSWORD": "wrong"},
            f"refused SASL authentication for user '{USER}' (KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD): "
            "Authentication failed during authentication due to invalid credentials with SASL mechanism "
            "SCRAM-SHA-512",
        ),
        (
            {"KAFKA_SASL_USERNAME": "nobody"},
            "refused SASL authentication for user 'nobody' (KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD)",
        ),
        (
            {"KAFKA_SSL_CAFILE": ""},
            "not trusted (KAFKA_SSL_CAFILE=unset: system CAs): unable to get local issuer certificate",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SASL_MECHANISM": "",
                "KAFKA_SASL_USERNAME": "",
                "KAFKA_SASL_PASSWORD": "",
            },
            "closed the connection before serving a request: it requires SASL authentication "
            "(KAFKA_SECURITY_PROTOCOL=SSL; set SASL_SSL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SSL_CAFILE": ""},
            "closed the connection at the first request: the listener probably requires TLS "
            "(KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT; use SSL or SASL_SSL)",
        ),
        (
            {"KAFKA_SASL_MECHANISM": "PLAIN"},
            "does not offer SASL mechanism PLAIN (KAFKA_SASL_MECHANISM)",
        ),
    ],
    ids=["wrong-password", "unknown-user", "no-ca", "no-sasl", "no-tls", "mechanism"],
)
async def test_each_refusal_names_its_setting(
    secure: SecureBroker, pki: TestPki, overrides: dict[str, str], expected: str
) -> None:
    began = time.monotonic()
    message = await refusal(secure.bootstrap, sasl_ssl(pki, **overrides))
    assert message.startswith(f"broker {secure.bootstrap} ") or message.startswith(
        "TLS certificate of broker"
    )
    assert expected in message
    assert time.monotonic() - began < 5  # refusals are answers, not timeouts


async def test_hostname_verification_is_on_by_default(pki: TestPki) -> None:
    """A certificate that does not name the address dialled is refused unless KAFKA_SSL_CHECK_HOSTNAME=false."""
    with SecureBroker(users={USER: PASSWORD}, pki=pki, hosts=("kafka.example.internal",)) as other:
        message = await refusal(other.bootstrap, sasl_ssl(pki))
        assert "does not name the host dialled (KAFKA_BOOTSTRAP must use a name in the certificate" in message
        admin = KafkaAdmin(
            bootstrap_servers=other.bootstrap,
            connection=KafkaConnection.from_env(sasl_ssl(pki, KAFKA_SSL_CHECK_HOSTNAME="false")),
        )
        await admin.start()
        await admin.close()


async def test_mutual_tls(pki: TestPki, tmp_path: Path) -> None:
    client = pki.issue("relay-client", client=True, key_password="key secret")
    key_password = tmp_path / "key-password"
    key_password.write_text("key secret\n")
    with SecureBroker(users={}, pki=pki, mechanisms=(), client_ca=pki.ca) as mtls:
        env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(pki.ca)}
        message = await refusal(mtls.bootstrap, env)
        assert (
            "closed the connection after the TLS handshake: it probably requires a client certificate "
            in message
        )
        assert "(KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE=unset)" in message
        env |= {
            "KAFKA_SSL_CERTFILE": str(client.cert),
            "KAFKA_SSL_KEYFILE": str(client.key),
            "KAFKA_SSL_KEY_PASSWORD_FILE": str(key_password),
        }
        admin = KafkaAdmin(bootstrap_servers=mtls.bootstrap, connection=KafkaConnection.from_env(env))
        await admin.start()
        assert await admin.list_topics() is not None
        await admin.close()


async def test_refused_starts_back_off_and_stop_promptly(
    secure: SecureBroker, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """One log line a try, at growing intervals; a stop request ends the wait at once."""
    connection = KafkaConnection.from_env(sasl_ssl(pki, KAFKA_SASL_PASSWORD="wrong"))
    admin = KafkaAdmin(bootstrap_servers=secure.bootstrap, connection=connection)
    stopping = asyncio.Event()
    caplog.set_level(logging.INFO, logger="outbox.kafka")
    task = asyncio.create_task(
        start_with_backoff("test admin", admin.start, admin.close, stopping, initial_s=0.2)
    )
    await asyncio.sleep(1.6)  # tries at 0, 0.2, 0.6, 1.4 s
    stopping.set()
    began = time.monotonic()
    assert await task is False
    assert time.monotonic() - began < 0.5
    lines = [r for r in caplog.records if r.name == "outbox.kafka"]
    assert 3 <= len(lines) <= 5, [r.getMessage() for r in lines]
    assert all(r.levelno == logging.ERROR and "refused SASL authentication" in r.getMessage() for r in lines)
    assert all(r.exc_info is None for r in lines)  # no traceback
    assert "retrying in 0.2s" in lines[0].getMessage() and "retrying in 0.8s" in lines[2].getMessage()


def test_aiokafka_connection_lines_are_explained_or_thinned() -> None:
    """Bootstrap failures are dropped (the library raises the explained error); a running client's
    reconnect error, logged by aiokafka every 100 ms, passes once a minute per distinct line."""
    from outbox.telemetry.logs import ExplainedBootstrapFilter

    keep = ExplainedBootstrapFilter()

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, args, None)

    assert not keep.filter(record('Unable connect to "%s:%s": %s', "h", 1, "refused"))
    node = "Unable connect to node with id %s: %s"
    assert [keep.filter(record(node, 1, "SaslAuthenticationFailed")) for _ in range(5)] == [True] + [
        False
    ] * 4
    assert keep.filter(record(node, 2, "SaslAuthenticationFailed"))  # another broker: its own line
    assert keep.filter(record("Something else %s", 1))
