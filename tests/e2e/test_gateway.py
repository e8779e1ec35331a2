"""The gateway alone, in seconds: the real nginx on the configuration `make run` serves (rendered from
deploy/gateway/gateway.conf.template by scripts/gateway.py's own `configure`), in front of a small real
FastAPI app under uvicorn with the services' forwarding settings (it answers what it received, and its
router redirects a trailing slash the way the services' routers do). Requests are real HTTP: httpx, or a raw
socket where the bytes themselves are the point (oversize headers, a quote or a control byte in a header).
The access log is nginx's stdout, written to a file and read back.

Upstreams: console and indexer are the app; auth is a port nobody listens on (the gateway's own 502).
tests/e2e/test_quickstart.py covers the same gateway in front of the real services (`make run`).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from scripts import gateway
from testsupport import free_port
from testsupport.broker import poll_until

pytestmark = [pytest.mark.e2e]

SOURCE_ADDRESS = "127.0.0.2"  # the gateway connects from here (proxy_bind), as with `make run`
NGINX_ID = re.compile(r"[0-9a-f]{32}")


def upstream_app() -> FastAPI:
    app = FastAPI()

    async def echo(request: Request) -> dict[str, Any]:
        return {
            "path": request.url.path,
            "query": request.url.query,
            "client": request.client.host if request.client else None,
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw},
        }

    app.add_api_route("/console/api/echo", echo)
    app.add_api_route("/indexer/api/search", echo)

    # `GET /console/api/datasets/` matches no route: the router answers 307 to the path without the slash,
    # an absolute URL built from the Host header it received (as console's own router does).
    @app.get("/console/api/datasets")
    async def datasets() -> dict[str, list[str]]:
        return {"datasets": []}

    # What every service answers (servicekit.request_trace): the trace its server span belongs to.
    @app.get("/console/api/traced")
    async def traced() -> JSONResponse:
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        headers = {"traceresponse": f"00-{trace_id}-00f067aa0ba902b7-01", "X-Trace-Id": trace_id}
        return JSONResponse({"traced": True}, headers=headers)

    @app.get("/console/api/boom")
    async def boom() -> JSONResponse:
        return JSONResponse({"error": {"code": "internal", "message": "the service's own 500"}}, 500)

    return app


@dataclass
class Gateway:
    url: str
    port: int
    prefix: Path
    access_log: Path
    upstream_port: int

    def raw(self, request: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
        """Send `request` as-is on a new connection; the status, headers (lower-cased names) and body."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
            conn.sendall(request)
            received = b""
            while b"\r\n\r\n" not in received and (chunk := conn.recv(65536)):
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "-1"))
            while (length < 0 or len(body) < length) and (chunk := conn.recv(65536)):
                body += chunk
        return int(status_line.split()[1]), headers, body

    def log_line(self, request_id: str) -> dict[str, Any]:
        """The access log's line for the request that carried `request_id` (waits for it to be written)."""

        found: list[dict[str, Any]] = []

        def written() -> bool:
            lines = self.access_log.read_text(errors="replace").splitlines()
            found.extend(e for e in map(json.loads, lines) if e.get("request_id") == request_id)
            return bool(found)

        poll_until(written, timeout=5, what=f"the access log line of {request_id}")
        return found[0]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    try:  # installs Debian's nginx when root, as `make run` does: the suite may run before any `make run`
        gateway.ensure_binary()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    base = tmp_path_factory.mktemp("gateway")
    upstream_port, gateway_port = free_port(), free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            upstream_app(),
            host="127.0.0.1",
            port=upstream_port,
            proxy_headers=True,
            forwarded_allow_ips=SOURCE_ADDRESS,  # servicekit.serve's setting under `make run`
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    argv = gateway.configure(
        base / "nginx",
        {
            "GATEWAY_LISTEN": f"127.0.0.1:{gateway_port}",
            "GATEWAY_SOURCE_ADDRESS": SOURCE_ADDRESS,
            "AUTH_UPSTREAM": f"127.0.0.1:{free_port()}",  # nobody listens: 502
            "CONSOLE_UPSTREAM": f"127.0.0.1:{upstream_port}",
            "INDEXER_UPSTREAM": f"127.0.0.1:{upstream_port}",
        },
    )
    access_log = base / "access.log"
    with open(access_log, "wb") as out, open(base / "error.log", "wb") as err:
        nginx = subprocess.Popen(argv, stdout=out, stderr=err)
    gw = Gateway(f"http://127.0.0.1:{gateway_port}", gateway_port, base / "nginx", access_log, upstream_port)
    try:

        def up() -> bool:
            assert nginx.poll() is None, (base / "error.log").read_text()
            try:
                return httpx.get(f"{gw.url}/console/api/echo", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        poll_until(up, timeout=20, what="nginx and the upstream app to answer", interval=0.05)
        yield gw
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        server.should_exit = True
        thread.join(timeout=10)


def unique_id() -> str:
    return f"test-{uuid.uuid4().hex}"


# --- 5: the client's Host never reaches a Location header ------------------------------------------------


def test_a_services_trailing_slash_redirect_does_not_carry_the_clients_host(gw: Gateway) -> None:
    moved = httpx.get(f"{gw.url}/console/api/datasets/", headers={"Host": "evil.example"})
    assert moved.status_code == 307, moved.text
    location = moved.headers["location"]
    assert "evil.example" not in location, location
    # Relative: a client resolves it against the address it used, which is the gateway.
    assert location == "/console/api/datasets", location
    followed = httpx.get(f"{gw.url}/console/api/datasets/", follow_redirects=True)
    assert followed.status_code == 200 and followed.json() == {"datasets": []}
    assert str(followed.url) == f"{gw.url}/console/api/datasets"


def test_the_services_see_a_fixed_host_never_the_clients(gw: Gateway) -> None:
    echoed = httpx.get(f"{gw.url}/console/api/echo", headers={"Host": "evil.example"}).json()
    assert echoed["headers"]["host"] == "console_api"


def test_nginxs_own_slash_redirect_does_not_carry_the_clients_host(gw: Gateway) -> None:
    moved = httpx.get(f"{gw.url}/console/api", headers={"Host": "evil.example"})
    assert moved.status_code == 301
    assert moved.headers["location"] == "/console/api/"


# --- 6: X-Request-ID only when it is a short safe token; every gateway error is JSON ---------------------


@pytest.mark.parametrize("length", [41, 64])
def test_a_safe_request_id_is_kept_end_to_end(gw: Gateway, length: int) -> None:
    request_id = (unique_id() + "._-" + uuid.uuid4().hex)[:length]
    answer = httpx.get(f"{gw.url}/console/api/echo", headers={"X-Request-ID": request_id})
    assert answer.headers["x-request-id"] == request_id
    assert answer.json()["headers"]["x-request-id"] == request_id
    assert gw.log_line(request_id)["status"] == 200


@pytest.mark.parametrize(
    "sent",
    [
        b'unsafe"id',
        b"unsafe\\id",
        b"unsafe\x1b[31mid",
        b"unsafe\x7fid",
        b"unsafe id",
        b"unsafe/id",
        b"unsafe-\xc3\xa9",
        b"unsafe-" + b"x" * 58,
    ],
    ids=["quote", "backslash", "escape", "del", "space", "slash", "non-ascii", "65-chars"],
)
def test_an_unsafe_request_id_is_replaced_by_nginxs_own(gw: Gateway, sent: bytes) -> None:
    status, headers, body = gw.raw(
        b"GET /console/api/echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Request-ID: "
        + sent
        + b"\r\n\r\n"
    )
    assert status == 200, body
    returned = headers["x-request-id"]
    assert NGINX_ID.fullmatch(returned), returned
    assert json.loads(body)["headers"]["x-request-id"] == returned  # the services see the same id
    assert gw.log_line(returned)["uri"] == "/console/api/echo"
    assert "unsafe" not in gw.access_log.read_text(errors="replace")


def oversize(name: str, size: int) -> bytes:
    return (
        b"GET /console/api/echo HTTP/1.1\r\nHost: gw\r\n" + name.encode() + b": " + b"x" * size + b"\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n", 404, "not_found"),
        (b"GET /_gateway/error/502 HTTP/1.1\r\nHost: gw\r\n\r\n", 404, "not_found"),
        (b"TRACE /console/api/echo HTTP/1.1\r\nHost: gw\r\n\r\n", 405, "method_not_allowed"),
        (
            b"POST /console/api/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 2000000\r\n\r\n",
            413,
            "payload_too_large",
        ),
        (b"GET /console/api/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 414, "uri_too_long"),
        (oversize("X-Padding", 9 * 1024), 431, "request_header_too_large"),
        (oversize("Cookie", 9 * 1024), 431, "request_header_too_large"),
        (
            b"GET /console/api/echo HTTP/1.1\r\nHost: gw\r\n"
            + b"".join(f"X-Pad-{i}: ".encode() + b"y" * 7000 + b"\r\n" for i in range(6))
            + b"\r\n",
            431,
            "request_header_too_large",
        ),
        (
            b"POST /console/api/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "not_implemented",
        ),
        (b"GET /console/api/echo HTTP/2.0\r\nHost: gw\r\n\r\n", 505, "http_version_not_supported"),
        (b"GET /auth/api/me HTTP/1.1\r\nHost: gw\r\n\r\n", 502, "bad_gateway"),
    ],
    ids=[
        "400",
        "404",
        "404-internal-page",
        "405-trace",
        "413",
        "414-long-uri",
        "431-long-header",
        "431-long-cookie",
        "431-headers-total",
        "501",
        "505",
        "502",
    ],
)
def test_every_error_the_gateway_produces_is_json_in_the_services_shape(
    gw: Gateway, request_bytes: bytes, status: int, code: str
) -> None:
    got_status, headers, body = gw.raw(request_bytes)
    assert got_status == status, body
    assert headers["content-type"] == "application/json", headers
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"], error
    assert NGINX_ID.fullmatch(headers["x-request-id"]), headers


def test_an_internal_error_of_the_gateway_is_json_too(gw: Gateway) -> None:
    # A body over client_body_buffer_size goes to a temp file; without its directory nginx answers 500.
    body_dir = gw.prefix / "tmp" / "client_body"
    shutil.rmtree(body_dir)
    try:
        answer = httpx.post(f"{gw.url}/console/api/echo", content=b"x" * (256 * 1024))
    finally:
        body_dir.mkdir()
    assert answer.status_code == 500, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"] == "internal_error"


def test_a_services_own_error_passes_through_untouched(gw: Gateway) -> None:
    answer = httpx.get(f"{gw.url}/console/api/boom")
    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "internal", "message": "the service's own 500"}}


# --- 7: no query string in the access log ----------------------------------------------------------------


def test_the_access_log_has_the_path_never_the_query_string(gw: Gateway) -> None:
    request_id = unique_id()
    secret = f"secret-term-{uuid.uuid4().hex}"
    answer = httpx.get(
        f"{gw.url}/indexer/api/search",
        params={"dataset_id": "42", "q": secret},
        headers={"X-Request-ID": request_id},
    )
    assert answer.json()["query"] == f"dataset_id=42&q={secret}"  # the service still gets the query
    line = gw.log_line(request_id)
    assert line["uri"] == "/indexer/api/search", line
    assert secret not in gw.access_log.read_text(errors="replace")


# --- the trace id of the service's answer: passed to the client, written into the access log -------------


def test_the_services_trace_id_reaches_the_client_and_the_access_log(gw: Gateway) -> None:
    request_id = unique_id()
    answer = httpx.get(f"{gw.url}/console/api/traced", headers={"X-Request-ID": request_id})
    assert answer.status_code == 200
    assert answer.headers["x-trace-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert answer.headers["traceresponse"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    line = gw.log_line(request_id)
    assert (line["request_id"], line["trace_id"]) == (request_id, "4bf92f3577b34da6a3ce929d0e0e4736")
    untraced = unique_id()
    assert httpx.get(f"{gw.url}/auth/api/me", headers={"X-Request-ID": untraced}).status_code == 502
    assert gw.log_line(untraced)["trace_id"] == ""  # no service answered: no trace to name
