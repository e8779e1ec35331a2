"""Compose's Kafka security (deploy/kafka_acls.py, deploy/kafka/, deploy/credentials.py): the ACLs the init job
applies, every client on SASL_SSL as its own principal, the brokers' settings and TLS material. No Apache Kafka
image can be pulled here: the scripts run against stand-in tools and the checks read the compose files."""

from __future__ import annotations

import copy
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy import kafka_acls
from deploy.credentials import generate
from outbox.kafka.connection import KafkaConnection

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
INIT = DEPLOY / "kafka" / "init.sh"
BROKER = DEPLOY / "kafka" / "broker.sh"
PRODUCERS = {"auth-relay", "console-relay", "indexer-relay"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def ops(grants: dict[str, list[kafka_acls.Grant]], principal: str) -> dict[tuple[str, str], set[str]]:
    return {(kind, name): set(o) for kind, name, o in grants.get(principal, [])}


# --- the ACLs ------------------------------------------------------------------------------------------------
def test_init_sh_is_generated_from_kafka_acls() -> None:
    assert INIT.read_text() == kafka_acls.render(), "python deploy/kafka_acls.py > deploy/kafka/init.sh"


@pytest.mark.parametrize("prefix", ["", "staging."])
def test_the_init_job_grants_each_principal_exactly_its_acls(prefix: str) -> None:
    grants, calls = kafka_acls.applied(INIT, prefix)
    assert kafka_acls.policy_findings(grants) == []
    assert set(grants) == set(kafka_acls.PRINCIPALS) and "admin" not in grants
    # Producers: Write + Describe on their own service's topics, nothing else.
    assert ops(grants, "auth-relay") == {
        ("topic", "auth.account"): {"Write", "Describe"},
        ("topic", "auth.mail"): {"Write", "Describe"},
    }
    assert ops(grants, "console-relay") == {("topic", "console.document"): {"Write", "Describe"}}
    assert ops(grants, "indexer-relay") == {("topic", "indexer.document"): {"Write", "Describe"}}
    # Consumers: Read what they subscribe to, their own group, Write their own dead letters.
    assert ops(grants, "console-consumer") == {
        ("topic", "auth.account"): {"Read", "Describe"},
        ("topic", "indexer.document"): {"Read", "Describe"},
        ("group", "console"): {"Read"},
        ("topic", "console.dlq"): {"Write", "Describe"},
    }
    assert ops(grants, "indexer-consumer") == {
        ("topic", "console.document"): {"Read", "Describe"},
        ("group", "indexer"): {"Read"},
        ("topic", "indexer.dlq"): {"Write", "Describe"},
    }
    assert ops(grants, "mailer") == {
        ("topic", "auth.mail"): {"Read", "Describe"},
        ("group", "auth-mailer"): {"Read"},
        ("topic", "auth-mailer.dlq"): {"Write", "Describe"},
    }
    # The APIs' lag probes: Describe the group (committed offsets), Read the topics (fetch highwater).
    assert ops(grants, "console-api") == {
        ("topic", "auth.account"): {"Read", "Describe"},
        ("topic", "indexer.document"): {"Read", "Describe"},
        ("group", "console"): {"Describe"},
    }
    assert ops(grants, "indexer-api") == {
        ("topic", "console.document"): {"Read", "Describe"},
        ("group", "indexer"): {"Describe"},
    }
    # Who writes, who reads auth.mail, who joins a group.
    writers = {
        p
        for p, gs in grants.items()
        for kind, name, o in gs
        if kind == "topic" and "Write" in o and not name.endswith(".dlq")
    }
    assert writers == PRODUCERS
    mail_readers = {
        p
        for p, gs in grants.items()
        for _, name, o in gs
        if name in ("auth.mail", "auth-mailer.dlq") and "Read" in o
    }
    assert mail_readers == {"mailer"}
    # Every principal's credential from its own file, the topics under the prefix, LITERAL names only.
    scram = {
        c[c.index("--entity-name") + 1]: c[c.index("--add-config") + 1]
        for c in calls
        if c[0] == "kafka-configs.sh"
    }
    assert scram == {
        p: f"SCRAM-SHA-512=[password=pw-{kafka_acls.password_secret(p)}]" for p in kafka_acls.PRINCIPALS
    }
    created = [c[c.index("--topic") + 1] for c in calls if c[0] == "kafka-topics.sh"]
    assert created == [prefix + t for t in kafka_acls.TOPICS]
    acl_calls = [c for c in calls if c[0] == "kafka-acls.sh"]
    assert all("--add" in c and c[c.index("--resource-pattern-type") + 1] == "literal" for c in acl_calls)
    assert all(c[c.index("--command-config") + 1].endswith("admin.properties") for c in calls)


@pytest.mark.parametrize(
    ("principal", "grant", "expected"),
    [
        (
            "console-consumer",
            ("topic", "auth.mail", frozenset({"Read"})),
            "reads auth.mail, which only the mailer",
        ),
        (
            "console-relay",
            ("topic", "indexer.document", frozenset({"Write"})),
            "writes indexer.document, not one of its own",
        ),
        ("indexer-consumer", ("group", "console", frozenset({"Read"})), "joins group console"),
        ("operator", ("topic", "auth-mailer.dlq", frozenset({"Read"})), "reads auth-mailer.dlq"),
        (
            "indexer-api",
            ("topic", "console.document", frozenset({"Alter"})),
            "more than Read, Write, Describe",
        ),
    ],
)
def test_a_grant_beyond_the_policy_is_named(principal: str, grant: kafka_acls.Grant, expected: str) -> None:
    grants = copy.deepcopy(kafka_acls.POLICY)
    grants[principal].append(grant)
    findings = kafka_acls.policy_findings(grants)
    assert any(expected in f for f in findings), findings


# --- the compose files ---------------------------------------------------------------------------------------
def test_every_client_uses_sasl_ssl_as_its_own_principal_and_every_broker_denies_by_default() -> None:
    base, cluster, local = load("compose.yml"), load("compose.kafka-cluster.yml"), load("compose.local.yml")
    assert kafka_acls.compose_findings(kafka_acls.merge(base)) == []
    assert kafka_acls.compose_findings(kafka_acls.merge(base, cluster)) == []
    assert kafka_acls.compose_findings(kafka_acls.merge(base, local), plaintext_allowed=True) == []
    services = kafka_acls.merge(base, cluster)["services"]
    users = {
        n: s["environment"].get("KAFKA_SASL_USERNAME")
        for n, s in services.items()
        if "KAFKA_SASL_USERNAME" in s.get("environment", {})
    }
    assert users == {
        "console": "console-api",
        "indexer": "indexer-api",
        "auth-relay": "auth-relay",
        "console-relay": "console-relay",
        "indexer-relay": "indexer-relay",
        "console-consumer": "console-consumer",
        "indexer-consumer": "indexer-consumer",
        "auth-mailer": "mailer",
    }
    assert "KAFKA_BOOTSTRAP" not in services["auth"]["environment"]  # auth's API never talks to Kafka
    assert {
        s["environment"]["KAFKA_BOOTSTRAP"]
        for s in services.values()
        if "KAFKA_SASL_USERNAME" in s.get("environment", {})
    } == {"kafka:9093,kafka-2:9093,kafka-3:9093"}


def _mutated(change: Any, *, override: str | None = None, plaintext_allowed: bool = False) -> list[str]:
    base = load("compose.yml")
    files = [base] + ([load(override)] if override else [])
    config = kafka_acls.merge(*files)
    change(config["services"])
    return kafka_acls.compose_findings(config, plaintext_allowed=plaintext_allowed)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["console-relay"]["environment"].update(KAFKA_SECURITY_PROTOCOL="PLAINTEXT"),
            "console-relay: KAFKA_SECURITY_PROTOCOL=PLAINTEXT",
        ),
        (
            lambda s: s["indexer-consumer"]["environment"].update(KAFKA_SASL_USERNAME="console-consumer"),
            "indexer-consumer: shares principal",
        ),
        (
            lambda s: s["console"]["environment"].update(KAFKA_SASL_PASSWORD="x"),
            "console: KAFKA_SASL_PASSWORD as a value",
        ),
        (
            lambda s: s["auth-relay"].update(secrets=["auth_db_app_password"]),
            "auth-relay: KAFKA_SASL_PASSWORD_FILE is not its mounted secret",
        ),
        (
            lambda s: s["indexer"]["environment"].update(KAFKA_SSL_CHECK_HOSTNAME="false"),
            "indexer: KAFKA_SSL_CHECK_HOSTNAME is off",
        ),
        (
            lambda s: s["kafka"]["environment"].update(KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND="true"),
            "kafka: KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND",
        ),
        (
            lambda s: s["kafka"]["environment"].update(
                KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT"
            ),
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        ),
        (
            lambda s: s["console-relay"]["environment"].update(KAFKA_BOOTSTRAP="kafka:9092"),
            "bootstrap kafka:9092 is not a broker's SASL_SSL listener",
        ),
        (
            lambda s: s["console"].setdefault("secrets", []).append("kafka_admin_password"),
            "the admin's password is mounted into ['console']",
        ),
        (
            lambda s: s["indexer-relay"].setdefault("secrets", []).append("kafka_console_relay_password"),
            "indexer-relay: mounts other principals' passwords ['kafka_console_relay_password']",
        ),
    ],
)
def test_a_weakened_compose_file_is_refused(change: Any, expected: str) -> None:
    findings = _mutated(change)
    assert any(expected in f for f in findings), findings


def test_the_cluster_must_list_every_broker_and_secure_each() -> None:
    findings = _mutated(
        lambda s: s["console-relay"]["environment"].update(KAFKA_BOOTSTRAP="kafka:9093"),
        override="compose.kafka-cluster.yml",
    )
    assert any("leaves out ['kafka-2', 'kafka-3']" in f for f in findings), findings
    findings = _mutated(
        lambda s: s["kafka-3"]["environment"].pop("KAFKA_AUTHORIZER_CLASS_NAME"),
        override="compose.kafka-cluster.yml",
    )
    assert any(f.startswith("kafka-3: KAFKA_AUTHORIZER_CLASS_NAME") for f in findings), findings


def test_the_local_stand_in_is_plaintext_without_credentials_said_so() -> None:
    assert "KAFKA SECURITY IS OFF HERE" in (DEPLOY / "compose.local.yml").read_text()
    findings = _mutated(
        lambda s: s["console-relay"]["environment"].update(KAFKA_SASL_USERNAME="console-relay"),
        override="compose.local.yml",
        plaintext_allowed=True,
    )
    assert any("console-relay: the stand-in broker is PLAINTEXT only" in f for f in findings), findings


# --- what each process builds from its compose environment and secret files -----------------------------------
def _client_env(service: dict[str, Any], secrets: Path) -> dict[str, str]:
    env = {k: str(v) for k, v in service["environment"].items()}
    return {k: v.replace("/run/secrets/", f"{secrets}/") for k, v in env.items()}


def _secret_files(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    generate(directory)
    # compose mounts each secret under its compose name: lay the files out the same way
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    for name, spec in load("compose.yml")["secrets"].items():
        (mounted / name).write_bytes((directory / Path(spec["file"]).name).read_bytes())
    return mounted


def test_each_client_builds_sasl_ssl_settings_from_its_files(tmp_path: Path) -> None:
    mounted = _secret_files(tmp_path)
    services = kafka_acls.merge(load("compose.yml"))["services"]
    for svc in services.values():
        if "KAFKA_SASL_USERNAME" not in svc.get("environment", {}):
            continue
        connection = KafkaConnection.from_env(_client_env(svc, mounted))
        assert connection.security_protocol == "SASL_SSL" and connection.sasl_mechanism == "SCRAM-SHA-512"
        assert (
            connection.sasl_password
            == (mounted / kafka_acls.password_secret(connection.sasl_username or "")).read_text().strip()
        )
        assert connection.ssl_check_hostname
    local = kafka_acls.merge(load("compose.yml"), load("compose.local.yml"))["services"]
    assert (
        KafkaConnection.from_env(_client_env(local["console-relay"], mounted)).security_protocol
        == "PLAINTEXT"
    )


def test_the_brokers_certificate_is_trusted_for_each_broker_name(tmp_path: Path) -> None:
    """A TLS server with the brokers' keystore; the client context the library builds from compose's settings
    accepts it as kafka, kafka-2 and kafka-3 and refuses any other name."""
    mounted = _secret_files(tmp_path)
    password = (mounted / "kafka_keystore_password").read_text().strip().encode()
    key, cert, chain = pkcs12.load_key_and_certificates((mounted / "kafka_keystore").read_bytes(), password)
    assert key is not None and cert is not None and len(chain) == 1
    assert cert.subject.rfc4514_string() == kafka_acls.BROKER
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }  # brokers dial each other
    (tmp_path / "broker.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "broker.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(4):
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    env = _client_env(kafka_acls.merge(load("compose.yml"))["services"]["console-relay"], mounted)
    context = KafkaConnection.from_env(env).ssl_context()
    for host in ("kafka", "kafka-2", "kafka-3"):
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.version()
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="kafka-4")
    listener.close()


def test_credentials_reissue_the_keystore_with_a_new_ca_only(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    generate(directory)
    store, ca = (directory / "kafka-broker.p12").read_bytes(), (directory / "kafka-ca.pem").read_bytes()
    assert (directory / "kafka-ca.key").stat().st_mode & 0o077 == 0  # the CA's key: its owner alone
    assert generate(directory) == [] and (directory / "kafka-broker.p12").read_bytes() == store
    (directory / "kafka-ca.key").unlink()
    assert set(generate(directory)) == {"kafka-ca.pem", "kafka-ca.key", "kafka-broker.p12"}
    assert (directory / "kafka-ca.pem").read_bytes() != ca and (
        directory / "kafka-broker.p12"
    ).read_bytes() != store


# --- the broker's start script ----------------------------------------------------------------------------------
def test_broker_sh_renders_the_security_settings_and_formats_with_the_admin(tmp_path: Path) -> None:
    bin_dir, secrets, conf = tmp_path / "bin", tmp_path / "secrets", tmp_path / "conf"
    bin_dir.mkdir()
    secrets.mkdir()
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        (bin_dir / tool).write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{tmp_path}/{tool}.args"\n')
        (bin_dir / tool).chmod(0o755)
    (secrets / "kafka_keystore_password").write_text("store-pw\n")
    (secrets / "kafka_admin_password").write_text("admin-pw\n")
    broker_env = kafka_acls.merge(load("compose.yml"), load("compose.kafka-cluster.yml"))["services"][
        "kafka-2"
    ]["environment"]
    env = {k: str(v) for k, v in broker_env.items()}
    env |= {
        "PATH": os.environ["PATH"],
        "BROKER_BIN": str(bin_dir),
        "BROKER_SECRETS": str(secrets),
        "BROKER_CONF": str(conf),
    }
    env |= {"KAFKA_HEAP_OPTS": "-Xmx1G", "KAFKA_OPTS": "-Dx=y"}
    subprocess.run(["bash", str(BROKER)], env=env, check=True)
    props = dict(line.split("=", 1) for line in (conf / "server.properties").read_text().splitlines())
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin;User:CN=kafka-broker"
    assert props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"].startswith(
        "org.apache.kafka.common.security.scram.ScramLoginModule"
    )
    assert (
        props["listener.name.ssl.ssl.client.auth"]
        == props["listener.name.controller.ssl.client.auth"]
        == "required"
    )
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL"
    assert (
        props["node.id"] == "2"
        and props["controller.quorum.voters"] == "1@kafka:9094,2@kafka-2:9094,3@kafka-3:9094"
    )
    assert props["ssl.keystore.password"] == props["ssl.key.password"] == "store-pw"
    assert not {"heap.opts", "opts"} & set(props)  # launch-script variables are not broker properties
    assert oct((conf / "server.properties").stat().st_mode & 0o777) == "0o600"
    fmt = (tmp_path / "kafka-storage.sh.args").read_text().splitlines()
    assert (
        fmt[:2] == ["format", "--ignore-formatted"] and "SCRAM-SHA-512=[name=admin,password=admin-pw]" in fmt
    )
    assert (tmp_path / "kafka-server-start.sh.args").read_text().split() == [str(conf / "server.properties")]
    client = (conf / "internal-client.properties").read_text()
    assert "security.protocol=SSL" in client and "ssl.keystore.password=store-pw" in client
