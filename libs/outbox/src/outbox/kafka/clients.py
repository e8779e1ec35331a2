"""The library's Kafka clients: aiokafka's, with the process's KafkaConnection and a start that says why.

Every producer, consumer and admin client the library creates is one of these, so one set of settings
(`kafka_connection.py`, read from the environment when the client is made) reaches all of them.

aiokafka reports a refused connection as "Unable to bootstrap from [...]" and leaves the cause (a failed
SASL login, an untrusted certificate, a listener that wants TLS) in a log line. When a start fails this
module connects once more with aiokafka's own connection class, with the same settings, and raises an
error that names the cause and the setting to look at:

    KafkaAccessRefused: broker 127.0.0.1:9093 refused SASL authentication for user 'console-relay'
    (KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD): Authentication failed ... SCRAM-SHA-512

Processes that run until stopped retry with backoff (`start_with_backoff`, or the relay's outage retry);
one-shot commands print the error and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from outbox.kafka.connection import KafkaConnection

log = logging.getLogger("outbox.kafka")

CREDENTIALS = "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD"
_PROBE_TIMEOUT_S = 5.0
_NAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class KafkaAccessRefused(KafkaConnectionError):  # type: ignore[misc]
    """The broker answered and refused this client: credentials, certificates or ACLs. Retrying without
    changing a setting will not help (though a restarted or rotated secret may)."""


def _connection(options: dict[str, Any]) -> KafkaConnection:
    """`connection=` if given (tests, several clusters), else the environment's settings."""
    given = options.pop("connection", None)
    if given is not None and not isinstance(given, KafkaConnection):
        raise TypeError(f"connection must be a KafkaConnection, not {type(given).__name__}")
    return given or KafkaConnection.from_env()


class KafkaProducer(AIOKafkaProducer):  # type: ignore[misc]
    def __init__(self, *args: Any, **options: Any) -> None:
        self.connection = _connection(options)
        options = {**self.connection.client_kwargs(), **options}
        super().__init__(*args, **options)
        self._explain = _Explainer(self.connection, options, "producer")

    async def start(self) -> None:
        await self._explain.start(super().start, self.stop)


class KafkaConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    def __init__(self, *topics: str, **options: Any) -> None:
        self.connection = _connection(options)
        options = {**self.connection.client_kwargs(), **options}
        super().__init__(*topics, **options)
        group = options.get("group_id")
        self._explain = _Explainer(
            self.connection, options, f"consumer (group {group})" if group else "consumer"
        )

    async def start(self) -> None:
        await self._explain.start(super().start, self.stop)


class KafkaAdmin(AIOKafkaAdminClient):  # type: ignore[misc]
    def __init__(self, **options: Any) -> None:
        self.connection = _connection(options)
        options = {**self.connection.client_kwargs(), **options}
        super().__init__(**options)
        self._explain = _Explainer(self.connection, options, "admin client")

    async def start(self) -> None:
        await self._explain.start(super().start, self.close)


async def start_with_backoff(
    what: str,
    start: Callable[[], Awaitable[None]],
    undo: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    initial_s: float = 1.0,
    max_s: float = 60.0,
) -> bool:
    """`start()` until it works (True) or `stopping` is set (False). A Kafka failure logs one line, runs
    `undo()` (whatever the failed start left half-open) and waits, doubling up to `max_s`: a broker that
    refuses our credentials is asked once a minute, not in a loop."""
    delay = initial_s
    while True:
        try:
            await start()
            return True
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await undo()
            level = logging.ERROR if isinstance(exc, KafkaAccessRefused) else logging.WARNING
            log.log(level, "%s cannot start: %s; retrying in %.1fs", what, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        if stopping.is_set():
            return False
        delay = min(delay * 2, max_s)


class _Explainer:
    def __init__(self, connection: KafkaConnection, options: dict[str, Any], what: str) -> None:
        self.connection = connection
        bootstrap = options.get("bootstrap_servers", "localhost")
        self.bootstrap = bootstrap if isinstance(bootstrap, str) else ",".join(bootstrap)
        self.request_timeout_s = float(options.get("request_timeout_ms", 40_000)) / 1000
        self.what = what
        # The client's own settings (its SSLContext included), for the probe connection.
        self.security = {k: v for k, v in options.items() if k.startswith(("security_", "ssl_", "sasl_"))}

    async def start(self, start: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]]) -> None:
        began = time.monotonic()
        try:
            await start()
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await close()
            waited = time.monotonic() - began
            message = await self.explain(exc, timed_out=waited >= 0.9 * self.request_timeout_s)
            if message is None:
                raise
            refused = not message.startswith(("no answer", "cannot reach"))
            raise (KafkaAccessRefused if refused else KafkaConnectionError)(message) from exc

    async def explain(self, exc: BaseException, *, timed_out: bool) -> str | None:
        user = self.connection.sasl_username
        for kind, resource in (
            (TopicAuthorizationFailedError, "topic(s)"),
            (GroupAuthorizationFailedError, "consumer group"),
            (ClusterAuthorizationFailedError, "cluster operation"),
        ):
            if isinstance(exc, kind):
                principal = f"User:{user}" if user else "this client's principal"
                return (
                    f"broker {self.bootstrap} refused the {self.what}: not authorized for this {resource} "
                    f"({exc}); the ACLs for {principal} must allow it"
                )
        cause: BaseException = exc
        if isinstance(exc, KafkaConnectionError) and not isinstance(exc, KafkaAccessRefused):
            if timed_out:
                return f"no answer from broker {self.bootstrap} within {self.request_timeout_s:.0f}s (KAFKA_BOOTSTRAP)"
            cause = await self._probe()
        return self._describe(cause)

    async def _probe(self) -> BaseException:
        """Connect to the first bootstrap address as the client did; return what went wrong."""
        host, _, port = self.bootstrap.split(",")[0].strip().rpartition(":")
        try:
            conn = await create_conn(
                host or "localhost",
                int(port or 9092),
                request_timeout_ms=int(_PROBE_TIMEOUT_S * 1000),
                **self.security,
            )
        except Exception as probe_exc:
            return probe_exc
        try:
            await conn.send(MetadataRequest([]))  # served only after authentication
        except Exception as probe_exc:
            return _AfterHandshake(probe_exc)
        finally:
            conn.close()
        answered: BaseException = KafkaConnectionError("the broker answers this connection now")
        return answered

    def _describe(self, cause: BaseException) -> str | None:
        broker = f"broker {self.bootstrap}"
        c = self.connection
        if isinstance(cause, SaslAuthenticationFailed):
            return (
                f"{broker} refused SASL authentication for user {c.sasl_username!r} ({CREDENTIALS}): "
                f"{_text(cause)}"
            )
        if isinstance(cause, UnsupportedSaslMechanismError):
            offered = str(cause).partition("Enabled mechanisms are: ")[2]
            return f"{broker} does not offer SASL mechanism {c.sasl_mechanism} (KAFKA_SASL_MECHANISM)" + (
                f"; it offers {offered}" if offered else ""
            )
        if isinstance(cause, ssl.SSLCertVerificationError):
            if cause.verify_code in _NAME_MISMATCH:
                return (
                    f"TLS certificate of {broker} does not name the host dialled (KAFKA_BOOTSTRAP must use a name "
                    f"in the certificate; KAFKA_SSL_CHECK_HOSTNAME=false only if you must): {cause.verify_message}"
                )
            return (
                f"TLS certificate of {broker} not trusted (KAFKA_SSL_CAFILE={c.ssl_cafile or 'unset: system CAs'}): "
                f"{cause.verify_message}"
            )
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or str(cause)
            if "CERTIFICATE_REQUIRED" in reason or "BAD_CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
                return (
                    f"{broker} rejected the client certificate (KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE="
                    f"{c.ssl_certfile or 'unset'}): {reason}"
                )
            return f"TLS handshake with {broker} failed (KAFKA_SECURITY_PROTOCOL={c.security_protocol}): {reason}"
        if isinstance(cause, TimeoutError | asyncio.TimeoutError) and c.uses_tls:
            return (
                f"no TLS handshake with {broker} within {_PROBE_TIMEOUT_S:.0f}s: does the listener speak TLS? "
                f"(KAFKA_SECURITY_PROTOCOL={c.security_protocol})"
            )
        if isinstance(cause, _AfterHandshake) and not c.uses_sasl:
            return (
                f"{broker} closed the connection before serving a request: it requires SASL authentication "
                f"(KAFKA_SECURITY_PROTOCOL={c.security_protocol}; set SASL_SSL with KAFKA_SASL_MECHANISM and "
                f"{CREDENTIALS})"
            )
        if isinstance(cause, KafkaConnectionError) and "closed" in str(cause):
            if c.uses_tls:  # TLS 1.3: a refused client certificate shows as a close after the handshake
                return (
                    f"{broker} closed the connection after the TLS handshake: it probably requires a client "
                    f"certificate signed by a CA it trusts (KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE="
                    f"{c.ssl_certfile or 'unset'})"
                )
            return (
                f"{broker} closed the connection at the first request: the listener probably requires TLS "
                f"(KAFKA_SECURITY_PROTOCOL={c.security_protocol}; use SSL or SASL_SSL)"
            )
        if isinstance(cause, OSError):
            return f"cannot reach {broker} (KAFKA_BOOTSTRAP): {cause.strerror or cause}"
        return None


class _AfterHandshake(Exception):
    """The connection (TLS, SASL if configured) was accepted, then the first real request failed."""


def _text(exc: BaseException) -> str:
    return str(exc).removeprefix(f"[Error {getattr(exc, 'errno', '')}] {type(exc).__name__}: ").strip()
