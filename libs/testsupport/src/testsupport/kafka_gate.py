"""A Kafka listener that enforces TLS and SASL in front of a broker that cannot: the security half of a
Kafka listener (`listeners=SASL_SSL://…`), for tests of the clients' settings and refusals.

Why: Tansu 0.6.0 (the broker that installs here) enforces neither (measured, tests/e2e/README.md):
`--cert` and `--key` cannot be given together, so it never serves TLS, and with `--authentication` every
SCRAM login fails (its memory and s3 storages keep no SCRAM credentials) and PLAIN is not offered.

What the gate does, as Apache Kafka's listener does it:
- TLS with the given certificate (optionally requiring a client certificate signed by `client_ca`);
- before authentication only ApiVersions (forwarded to the broker), SaslHandshake and SaslAuthenticate
  (v0/v1) are answered; any other request closes the connection, as Kafka closes it;
- SCRAM-SHA-256/512 (RFC 5802/7677, server side) and PLAIN against `users`; a failure is answered with
  SASL_AUTHENTICATION_FAILED (58) and Kafka's own message, then the connection is closed;
- once authenticated, bytes are piped both ways untouched.
The broker behind it must advertise the gate's port (`SecureBroker` wires both).

    with SecureBroker(users={"relay": "pw"}, pki=TestPki(tmp)) as broker:   # SASL_SSL, SCRAM-SHA-512 or PLAIN
        broker.bootstrap; broker.gate.refusals; broker.gate.set_password("relay", "new")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import ssl
import struct
from pathlib import Path
from typing import TypeVar

from testsupport.broker import TansuBroker
from testsupport.loop_thread import LoopThread
from testsupport.ports import free_port
from testsupport.tls import TestPki

T = TypeVar("T")
API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_SCRAM_ITERATIONS = 4096


class _Closed(Exception):
    """The client must be disconnected (what Kafka does on a refused or out-of-order request)."""


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


class _Request:
    """A request header v1 (what SaslHandshake and SaslAuthenticate v0/v1 use) and the body after it."""

    def __init__(self, frame: bytes) -> None:
        self.api_key, self.api_version, self.correlation_id = struct.unpack(">hhi", frame[:8])
        (client_id_len,) = struct.unpack(">h", frame[8:10])
        self.body = frame[10 + max(client_id_len, 0) :]

    def string(self) -> str:
        (length,) = struct.unpack(">h", self.body[:2])
        return self.body[2 : 2 + length].decode()

    def bytes_field(self) -> bytes:
        (length,) = struct.unpack(">i", self.body[:4])
        return self.body[4 : 4 + length]

    def response(self, body: bytes) -> bytes:
        payload = struct.pack(">i", self.correlation_id) + body
        return struct.pack(">i", len(payload)) + payload


class _Scram:
    """One SCRAM exchange, server side: client-first → server-first, client-final → server-final."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash = _HASHES[mechanism]
        self.users = users
        self.user = ""
        self.salt = os.urandom(16)
        self.nonce = ""
        self.client_first_bare = self.server_first = ""

    def first(self, message: str) -> str:
        _gs2_flag, _authzid, self.client_first_bare = message.split(",", 2)
        fields = dict(part.split("=", 1) for part in self.client_first_bare.split(","))
        self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
        self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        salt = base64.b64encode(self.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={_SCRAM_ITERATIONS}"
        return self.server_first

    def final(self, message: str) -> str | None:
        """The server-final message, or None when the proof is wrong (or the user unknown)."""
        without_proof, proof_field = message.rsplit(",p=", 1)
        if dict(part.split("=", 1) for part in without_proof.split(","))["r"] != self.nonce:
            return None
        password = self.users.get(self.user)
        if password is None:
            return None
        salted = hashlib.pbkdf2_hmac(self.hash, password.encode(), self.salt, _SCRAM_ITERATIONS)
        client_key = hmac.digest(salted, b"Client Key", self.hash)
        stored_key = hashlib.new(self.hash, client_key).digest()
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.hash)
        proof = base64.b64decode(proof_field)
        recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.hash, recovered).digest(), stored_key):
            return None
        server_key = hmac.digest(salted, b"Server Key", self.hash)
        return "v=" + base64.b64encode(hmac.digest(server_key, auth_message, self.hash)).decode()


class SecureGate(LoopThread):
    def __init__(
        self,
        upstream_port: int,
        *,
        users: dict[str, str],
        listen_port: int | None = None,
        mechanisms: tuple[str, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"),
        tls: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
    ) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.listen_port = listen_port or free_port()
        self.users = dict(users)
        self.mechanisms = mechanisms
        self.refusals: list[str] = []  # why each refused client was refused, for assertions
        self.authenticated: list[str] = []
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
            if client_ca is not None:
                self._tls.verify_mode = ssl.CERT_REQUIRED
                self._tls.load_verify_locations(cafile=client_ca)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def set_password(self, user: str, password: str) -> None:
        """Change (or add) a user's password: new logins are checked against it (like Kafka's SCRAM)."""
        self.users[user] = password

    def start(self) -> SecureGate:
        self._start_loop("kafka-gate")
        return self

    def __enter__(self) -> SecureGate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside the gate's loop -----------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.listen_port, ssl=self._tls, reuse_address=True
        )

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(upstream)
            if self.mechanisms:
                await self._authenticate(reader, writer, up_reader, upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (_Closed, OSError, asyncio.IncompleteReadError, ValueError, KeyError, struct.error):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.transport.abort()
                    self._writers.discard(w)

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            frame = await self._frame(reader)
            request = _Request(frame)
            if request.api_key == API_VERSIONS:
                upstream.write(struct.pack(">i", len(frame)) + frame)
                response = await self._frame(up_reader)
                writer.write(struct.pack(">i", len(response)) + response)
                continue
            if request.api_key == SASL_HANDSHAKE and request.api_version in (0, 1):
                mechanism = request.string()
                error = 0 if mechanism in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
                enabled = struct.pack(">i", len(self.mechanisms)) + b"".join(map(_string, self.mechanisms))
                writer.write(request.response(struct.pack(">h", error) + enabled))
                if error:
                    self.refusals.append(f"mechanism {mechanism} not enabled")
                    raise _Closed
                scram = _Scram(mechanism, self.users) if mechanism in _HASHES else None
                continue
            if request.api_key == SASL_AUTHENTICATE and request.api_version in (0, 1) and mechanism:
                token = request.bytes_field()
                if scram is not None and not scram.server_first:
                    await self._answer(writer, request, scram.first(token.decode()).encode())
                    continue
                if scram is not None:
                    final = scram.final(token.decode())
                    user = scram.user
                else:
                    _authzid, user, password = token.decode().split("\0")
                    final = "" if self.users.get(user) == password else None
                if final is None:
                    self.refusals.append(f"{user}: invalid credentials ({mechanism})")
                    await self._answer(
                        writer,
                        request,
                        b"",
                        error=SASL_AUTHENTICATION_FAILED,
                        message="Authentication failed during authentication due to invalid credentials "
                        f"with SASL mechanism {mechanism}",
                    )
                    raise _Closed
                self.authenticated.append(user)
                await self._answer(writer, request, final.encode())
                return
            # Kafka: "Unexpected Kafka request of type ... during SASL handshake": the connection is closed.
            self.refusals.append(f"api {request.api_key} before authentication")
            raise _Closed

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        request: _Request,
        auth_bytes: bytes,
        *,
        error: int = 0,
        message: str | None = None,
    ) -> None:
        body = struct.pack(">h", error) + _string(message) + struct.pack(">i", len(auth_bytes)) + auth_bytes
        if request.api_version >= 1:
            body += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication
        writer.write(request.response(body))
        await writer.drain()

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        if not 0 < size < 1 << 20:
            raise _Closed  # e.g. a TLS ClientHello on a plaintext port
        return await reader.readexactly(size)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(64 * 1024):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


class SecureBroker:
    """A Tansu broker reachable only through a SecureGate: SASL_SSL by default, SSL with `mechanisms=()`.

    `pki` issues the gate's certificate for `hosts`; clients trust `pki.ca`."""

    def __init__(
        self,
        *,
        users: dict[str, str],
        pki: TestPki,
        mechanisms: tuple[str, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"),
        client_ca: Path | None = None,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    ) -> None:
        gate_port = free_port()
        self.broker = TansuBroker(advertised_port=gate_port)
        server = pki.issue(f"broker-{gate_port}", hosts=list(hosts))
        self.gate = SecureGate(
            self.broker.port,
            users=users,
            listen_port=gate_port,
            mechanisms=mechanisms,
            tls=(server.cert, server.key),
            client_ca=client_ca,
        )

    @property
    def bootstrap(self) -> str:
        return self.gate.address

    def start(self) -> SecureBroker:
        self.broker.start()
        try:
            self.gate.start()
        except BaseException:
            self.broker.stop()
            raise
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.gate.stop()
        self.broker.stop()

    def __enter__(self) -> SecureBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
