"""KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* / KAFKA_SSL_*: parsing, the kwargs handed to aiokafka, and one
error naming the variable for every combination that cannot work. No broker needed (see tests/e2e for the
refusals a broker gives)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from outbox.kafka.connection import KafkaConnection, KafkaSettingError
from testsupport.tls import TestPki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


def secret_file(tmp_path: Path, value: str, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_text(value)
    return str(path)


def test_default_is_plaintext_with_nothing_else() -> None:
    connection = KafkaConnection.from_env({})
    assert connection.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert connection.describe() == "PLAINTEXT"


def test_sasl_ssl_scram_with_a_password_file_and_a_ca(tmp_path: Path, pki: TestPki) -> None:
    connection = KafkaConnection.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SASL_USERNAME": "console-relay",
            "KAFKA_SASL_PASSWORD_FILE": secret_file(tmp_path, "s3cret\n"),
            "KAFKA_SSL_CAFILE": str(pki.ca),
        }
    )
    kwargs = connection.client_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "console-relay",
        "sasl_plain_password": "s3cret",  # the file's trailing newline is not part of it
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1  # the given CA, not the system's
    assert "s3cret" not in repr(connection) and "s3cret" not in connection.describe()
    assert connection.describe() == f"SASL_SSL, SCRAM-SHA-512 as console-relay, CA {pki.ca}"


def test_sasl_ssl_plain_with_the_system_trust_store() -> None:
    connection = KafkaConnection.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "API_KEY",
            "KAFKA_SASL_PASSWORD": "API_SECRET",
        }
    )
    kwargs = connection.client_kwargs()
    assert kwargs["sasl_mechanism"] == "PLAIN" and kwargs["sasl_plain_password"] == "API_SECRET"
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert "system default" in connection.describe()


def test_mutual_tls_with_an_encrypted_key_and_hostname_check_off(tmp_path: Path, pki: TestPki) -> None:
    client = pki.issue("relay", client=True, key_password="pass phrase")
    connection = KafkaConnection.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(pki.ca),
            "KAFKA_SSL_CERTFILE": str(client.cert),
            "KAFKA_SSL_KEYFILE": str(client.key),
            "KAFKA_SSL_KEY_PASSWORD_FILE": secret_file(tmp_path, "pass phrase\n", "key-pass"),
            "KAFKA_SSL_CHECK_HOSTNAME": "false",
        }
    )
    kwargs = connection.client_kwargs()
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["ssl_context"].check_hostname is False
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the chain is still verified


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is not one of PLAINTEXT, SSL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_MECHANISM",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"},
            "needs KAFKA_SASL_USERNAME; KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_PASSWORD or "
            "KAFKA_SASL_PASSWORD_FILE",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "KAFKA_SASL_MECHANISM='GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
        (
            {"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
            "KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not authenticate",
        ),
        ({"KAFKA_SSL_CAFILE": "/ca.pem"}, "KAFKA_SSL_* is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CAFILE=/nonexistent/ca.pem: cannot read (No such file or directory)",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "maybe"},
            "KAFKA_SSL_CHECK_HOSTNAME='maybe' is not true or false",
        ),
        (
            {"KAFKA_SASL_PASSWORD": "p", "KAFKA_SASL_PASSWORD_FILE": "/p"},
            "KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are both set",
        ),
        (
            {"KAFKA_SASL_PASSWORD_FILE": "/nonexistent/password"},
            "KAFKA_SASL_PASSWORD_FILE=/nonexistent/password: cannot read (No such file or directory)",
        ),
    ],
)
def test_settings_that_cannot_work_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaSettingError) as raised:
        KafkaConnection.from_env(env)
    assert message in str(raised.value)


def test_a_certificate_without_its_key(pki: TestPki) -> None:
    client = pki.issue("lonely", client=True)
    with pytest.raises(KafkaSettingError, match="KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together"):
        KafkaConnection.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(client.cert)})


def test_an_encrypted_key_without_its_password(pki: TestPki) -> None:
    client = pki.issue("locked", client=True, key_password="pw")
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CERTFILE": str(client.cert),
        "KAFKA_SSL_KEYFILE": str(client.key),
    }
    with pytest.raises(
        KafkaSettingError, match=r"KAFKA_SSL_KEYFILE=.* is encrypted: set KAFKA_SSL_KEY_PASSWORD"
    ):
        KafkaConnection.from_env(env)
    with pytest.raises(KafkaSettingError, match=r"KAFKA_SSL_KEY_PASSWORD.* is wrong"):
        KafkaConnection.from_env({**env, "KAFKA_SSL_KEY_PASSWORD": "not it"})


def test_a_file_that_is_not_a_certificate(tmp_path: Path, pki: TestPki) -> None:
    client = pki.issue("mismatch", client=True)
    other = pki.issue("other", client=True)
    garbage = secret_file(tmp_path, "not a certificate", "ca.pem")
    with pytest.raises(KafkaSettingError, match=r"KAFKA_SSL_CAFILE=.*: not a PEM certificate bundle"):
        KafkaConnection.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": garbage})
    with pytest.raises(KafkaSettingError, match="not a matching PEM certificate and key"):
        KafkaConnection.from_env(
            {
                "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CERTFILE": str(client.cert),
                "KAFKA_SSL_KEYFILE": str(other.key),
            }
        )


def test_a_password_file_is_read_again_each_time(tmp_path: Path) -> None:
    """A rotated secret (a re-mounted Kubernetes secret, say) reaches the next client a process starts."""
    path = secret_file(tmp_path, "first")
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD_FILE": path,
    }
    assert KafkaConnection.from_env(env).sasl_password == "first"
    Path(path).write_text("second\n")
    assert KafkaConnection.from_env(env).sasl_password == "second"
