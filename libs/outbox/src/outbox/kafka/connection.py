"""How every Kafka client of the library connects: TLS and SASL settings, from the environment.

| variable | meaning |
|---|---|
| `KAFKA_SECURITY_PROTOCOL` | `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` |
| `KAFKA_SASL_MECHANISM` | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`; required with `SASL_*` |
| `KAFKA_SASL_USERNAME` | the principal (an API key for PLAIN on managed clusters) |
| `KAFKA_SASL_PASSWORD` / `KAFKA_SASL_PASSWORD_FILE` | its secret, inline or in a file (one of the two) |
| `KAFKA_SSL_CAFILE` | PEM bundle of the CAs that sign the brokers' certificates; unset: the system's |
| `KAFKA_SSL_CERTFILE` + `KAFKA_SSL_KEYFILE` | client certificate and key, for mutual TLS (both or neither) |
| `KAFKA_SSL_KEY_PASSWORD` / `KAFKA_SSL_KEY_PASSWORD_FILE` | the key's passphrase, if it is encrypted |
| `KAFKA_SSL_CHECK_HOSTNAME` | `true` (default): the broker's certificate must name the host dialled |

aiokafka does the work (security_protocol, sasl_*, an `ssl.SSLContext` from `aiokafka.helpers.
create_ssl_context`); this module only reads, checks and hands over. Every mistake that can be seen
without a broker (an unknown protocol, a mechanism without credentials, a certificate without its key,
a file that cannot be read or parsed) raises one `KafkaSettingError` naming the variables, at start.
Files are read each time settings are built, so a rotated password or certificate is picked up by the
next client a process starts.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.helpers import create_ssl_context

from outbox.env_settings import SettingError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class KafkaSettingError(SettingError):
    """KAFKA_SECURITY_* / KAFKA_SASL_* / KAFKA_SSL_* settings that cannot work."""


@dataclass(frozen=True)
class KafkaConnection:
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise KafkaSettingError("; ".join(problems))

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaConnection:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name, "").strip() or None

        check = (get("KAFKA_SSL_CHECK_HOSTNAME") or "true").lower()
        if check not in _TRUE | _FALSE:
            raise KafkaSettingError(f"KAFKA_SSL_CHECK_HOSTNAME={check!r} is not true or false")
        return cls(
            security_protocol=(get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
            sasl_mechanism=(get("KAFKA_SASL_MECHANISM") or "").upper() or None,
            sasl_username=get("KAFKA_SASL_USERNAME"),
            sasl_password=_secret(env, "KAFKA_SASL_PASSWORD"),
            ssl_cafile=get("KAFKA_SSL_CAFILE"),
            ssl_certfile=get("KAFKA_SSL_CERTFILE"),
            ssl_keyfile=get("KAFKA_SSL_KEYFILE"),
            ssl_key_password=_secret(env, "KAFKA_SSL_KEY_PASSWORD"),
            ssl_check_hostname=check in _TRUE,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient alike."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=self._key_password(),
        )
        # Off only by choice (a broker reached by an address its certificate does not name); the chain is
        # still verified against the CA either way.
        context.check_hostname = self.ssl_check_hostname
        return context

    def describe(self) -> str:
        """For logs: what is used, never a secret."""
        parts = [self.security_protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.uses_tls:
            parts.append(f"CA {self.ssl_cafile or 'system default'}")
            if self.ssl_certfile:
                parts.append(f"client certificate {self.ssl_certfile}")
            if not self.ssl_check_hostname:
                parts.append("hostname not checked")
        return ", ".join(parts)

    def _key_password(self) -> Callable[[], str] | str:
        if self.ssl_key_password is not None:
            return self.ssl_key_password
        return _encrypted_key_without_password

    def _problems(self) -> list[str]:
        if self.security_protocol not in PROTOCOLS:
            return [
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol!r} is not one of {', '.join(PROTOCOLS)}"
            ]
        problems: list[str] = []
        protocol = f"KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
        if self.uses_sasl:
            if self.sasl_mechanism is None:
                problems.append(f"{protocol} needs KAFKA_SASL_MECHANISM ({', '.join(MECHANISMS)})")
            elif self.sasl_mechanism not in MECHANISMS:
                problems.append(
                    f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}"
                )
            if not self.sasl_username:
                problems.append(f"{protocol} needs KAFKA_SASL_USERNAME")
            if not self.sasl_password:
                problems.append(f"{protocol} needs KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            # Credentials that would be silently ignored: the operator believes the clients authenticate.
            problems.append(
                f"KAFKA_SASL_* is set but {protocol} does not authenticate: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_files = {
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        if not self.uses_tls:
            if any(tls_files.values()) or self.ssl_key_password:
                problems.append(f"KAFKA_SSL_* is set but {protocol} does not use TLS: use SSL or SASL_SSL")
            return problems
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            problems.append(
                "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mutual TLS): set both or neither"
            )
        unreadable = [
            f"{name}={path}: {why}" for name, path in tls_files.items() if (why := _unreadable(path))
        ]
        problems += unreadable
        if not problems:
            problems += self._tls_problems()
        return problems

    def _tls_problems(self) -> list[str]:
        """Load each file the way the client will, to name the one that is wrong."""
        probe = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ssl_cafile:
            try:
                probe.load_verify_locations(cafile=self.ssl_cafile)
            except (ssl.SSLError, ValueError) as exc:
                return [f"KAFKA_SSL_CAFILE={self.ssl_cafile}: not a PEM certificate bundle ({exc})"]
        if self.ssl_certfile and self.ssl_keyfile:
            try:
                probe.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, self._key_password())
            except _KeyIsEncrypted:
                return [f"KAFKA_SSL_KEYFILE={self.ssl_keyfile} is encrypted: set KAFKA_SSL_KEY_PASSWORD_FILE"]
            except (ssl.SSLError, ValueError) as exc:
                return [
                    f"KAFKA_SSL_CERTFILE={self.ssl_certfile} / KAFKA_SSL_KEYFILE={self.ssl_keyfile}: not a "
                    f"matching PEM certificate and key, or KAFKA_SSL_KEY_PASSWORD(_FILE) is wrong ({exc})"
                ]
        return []


class _KeyIsEncrypted(Exception):
    pass


def _encrypted_key_without_password() -> str:
    # Without a callable, OpenSSL would prompt on the terminal for the passphrase.
    raise _KeyIsEncrypted


def _unreadable(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return None


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """`NAME` or the content of the file `NAME_FILE` (one trailing newline dropped), not both."""
    inline = env.get(name) or None
    path = env.get(name + "_FILE", "").strip() or None
    if inline is not None and path is not None:
        raise KafkaSettingError(f"{name} and {name}_FILE are both set: keep one")
    if path is None:
        return inline
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read()
    except OSError as exc:
        raise KafkaSettingError(f"{name}_FILE={path}: cannot read ({exc.strerror or exc})") from exc
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise KafkaSettingError(f"{name}_FILE={path} is empty")
    return value
