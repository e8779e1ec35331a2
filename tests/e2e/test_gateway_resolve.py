"""The gateway finds a recreated service at its new address without a restart, as in compose: the real nginx on
deploy/gateway/gateway.conf.template rendered with compose's kind of upstreams (names, not addresses) and
deploy/gateway/docker-resolver.conf pointed at a small DNS server of the test's instead of Docker's
(127.0.0.11 exists only inside a container), with `valid=1s` instead of 10 s to keep the test short.

The name `console.test` first answers 127.0.0.1, where one backend listens; then 127.0.0.3, where another
listens on the same port (as a recreated container gets a new address). Requests through the gateway reach
the second backend once the answer expires, with nginx running on. A static upstream block (the template
before) would keep sending them to the first.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from scripts import gateway
from testsupport import free_port
from testsupport.broker import poll_until

pytestmark = [pytest.mark.e2e]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "gateway"


class Dns:
    """Answers A queries from `records` (name -> IPv4), TTL 1 s; counts the queries per name."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}
        self.queries: dict[str, int] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                packet, client = self.sock.recvfrom(512)
            except OSError:
                return
            labels, i = [], 12
            while packet[i]:
                labels.append(packet[i + 1 : i + 1 + packet[i]].decode())
                i += packet[i] + 1
            name, question = ".".join(labels).lower(), packet[12 : i + 5]
            qtype = struct.unpack("!H", packet[i + 1 : i + 3])[0]
            self.queries[name] = self.queries.get(name, 0) + 1
            address = self.records.get(name) if qtype == 1 else None
            flags = 0x8180 if address else 0x8183  # a response, recursion available; NXDOMAIN when unknown
            header = packet[:2] + struct.pack("!HHHHH", flags, 1, 1 if address else 0, 0, 0)
            answer = b""
            if address:
                answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(address)
            self.sock.sendto(header + question + answer, client)

    def close(self) -> None:
        self.sock.close()


def backend(host: str, port: int, name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"backend": name, "host": self.headers["Host"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def dns() -> Iterator[Dns]:
    server = Dns()
    yield server
    server.close()


def test_a_recreated_service_is_found_at_its_new_address_without_restarting_nginx(
    dns: Dns, tmp_path: Path
) -> None:
    try:  # installs Debian's nginx when root, as `make run` does
        nginx = gateway.ensure_binary()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    port = free_port()
    servers = [backend("127.0.0.1", port, "first"), backend("127.0.0.3", port, "second")]
    dns.records["console.test"] = "127.0.0.1"
    listen = free_port()
    values = {
        "GATEWAY_LISTEN": f"127.0.0.1:{listen}",
        "GATEWAY_SOURCE_ADDRESS": "off",
        "AUTH_UPSTREAM": f"auth.test:{port}",
        "CONSOLE_UPSTREAM": f"console.test:{port}",
        "INDEXER_UPSTREAM": f"indexer.test:{port}",
    }
    resolver = (DEPLOY / "docker-resolver.conf").read_text()
    assert re.search(r"^resolver 127\.0\.0\.11 valid=10s", resolver, re.M)
    resolver = resolver.replace("127.0.0.11", f"127.0.0.1:{dns.port}").replace("valid=10s", "valid=1s")
    for tmp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / tmp).mkdir(parents=True)
    (tmp_path / "resolver.conf").write_text(resolver)
    (tmp_path / "gateway.conf").write_text(
        gateway.render((DEPLOY / "gateway.conf.template").read_text(), values)
    )
    (tmp_path / "nginx.conf").write_text(
        gateway.MAIN_CONF.replace("include gateway.conf;", "include resolver.conf;\n  include gateway.conf;")
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "nginx.log", "wb"),  # noqa: SIM115 - nginx's lifetime is the test's
    )
    url = f"http://127.0.0.1:{listen}/console/api/echo"

    def answer() -> dict[str, str] | None:
        assert proc.poll() is None, (tmp_path / "nginx.log").read_text()
        try:
            response = httpx.get(url, timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    try:
        poll_until(lambda: answer() is not None, timeout=15, what="the gateway answering")
        assert answer() == {"backend": "first", "host": "console_api"}  # the fixed Host, not the name dialled
        asked = dns.queries["console.test"]
        dns.records["console.test"] = "127.0.0.3"  # the container was recreated elsewhere

        def moved() -> bool:
            found = answer()
            return found is not None and found["backend"] == "second"

        poll_until(moved, timeout=15, what="the gateway reaching the new address")
        assert dns.queries["console.test"] > asked  # it asked again, nginx was never restarted
        assert proc.poll() is None
        # a name that resolves nowhere: the gateway's own JSON 502, not a crash
        response = httpx.get(f"http://127.0.0.1:{listen}/auth/api/me", timeout=5)
        assert response.status_code == 502 and response.json()["error"]["code"] == "bad_gateway"
    finally:
        proc.terminate()
        proc.wait(10)
        for server in servers:
            server.shutdown()
