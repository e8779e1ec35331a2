"""A stand-in token issuer for service tests: an Ed25519 key, its JWKS served over real HTTP, and access
tokens shaped like auth's. Services verify them with the real `servicekit.auth` (point AUTH_JWKS_URL at
`jwks_url`); nothing in the verification path is bypassed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from testsupport.ports import free_port


class TestTokenIssuer:
    __test__ = False  # not a pytest test class

    def __init__(self, *, audience: str = "outbox-reference", issuer: str = "auth") -> None:
        self.audience = audience
        self.issuer = issuer
        self.kid = uuid.uuid4().hex
        self._key = Ed25519PrivateKey.generate()
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self._key.public_key()))
        self._jwks = json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}).encode()
        self.port = free_port()
        self.jwks_url = f"http://127.0.0.1:{self.port}/auth/.well-known/jwks.json"
        self._server: ThreadingHTTPServer | None = None

    def env(self) -> dict[str, str]:
        """The AUTH_* variables a service process needs to trust this issuer."""
        return {
            "AUTH_JWKS_URL": self.jwks_url,
            "AUTH_JWT_AUDIENCE": self.audience,
            "AUTH_JWT_ISSUER": self.issuer,
        }

    def start(self) -> TestTokenIssuer:
        body = self._jwks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def token(
        self, account_id: uuid.UUID | None = None, *, email: str = "", ttl: int = 600, **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {
            "sub": str(account_id or uuid.uuid4()),
            "email": email,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "aud": self.audience,
            "iss": self.issuer,
            **claims,
        }
        return jwt.encode(payload, self._key, algorithm="EdDSA", headers={"kid": self.kid})
