"""A TCP proxy between clients and a broker, to cut, black-hole or slow the link on purpose.

Clients must reach the broker *through* the proxy for every connection, not only the bootstrap one: a
Kafka client connects to the addresses the broker advertises in its metadata. So the broker behind a
proxy advertises the proxy's port and listens on another port (see `broker.BrokerBehindProxy`).

The proxy runs its own asyncio loop in a daemon thread, so it keeps forwarding whatever the test's own
loop is doing (blocking calls included); its methods are plain thread-safe calls.

    proxy = TcpProxy("127.0.0.1", broker_port, listen_port=advertised_port).start()
    proxy.cut()            # drop every connection; new ones are refused (mode="refuse") or
                           # accepted and never answered (mode="blackhole")
    proxy.restore()        # forward again
    proxy.set_latency(0.2) # delay every chunk, both directions, order preserved
    proxy.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Literal, TypeVar

from testsupport.loop_thread import LoopThread

T = TypeVar("T")
CutMode = Literal["refuse", "blackhole"]

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    blackholed: int = 0
    cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy(LoopThread):
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.latency = latency
        self.stats = ProxyStats()
        self._mode: CutMode | None = None
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    # -- public, thread-safe --------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    def start(self) -> TcpProxy:
        self._start_loop("tcp-proxy")
        return self

    def cut(self, mode: CutMode = "refuse") -> None:
        """Drop every live connection. New ones: refused (port closed) or black-holed (accepted, silent)."""
        self._call(self._cut(mode))

    def restore(self) -> None:
        self._call(self._restore())

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside the proxy's loop ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        # The port may be in TIME_WAIT after a restore; retry briefly (SO_REUSEADDR is set by asyncio).
        deadline = time.monotonic() + 5
        while True:
            try:
                self._server = await asyncio.start_server(
                    self._handle, self.listen_host, self.listen_port, reuse_address=True
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        sock = self._server.sockets[0]
        self.listen_port = int(sock.getsockname()[1])

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _cut(self, mode: CutMode) -> None:
        self._mode = mode
        self.stats.cuts += 1
        if mode == "refuse":
            await self._close_server()
        for link in list(self._links):
            link.abort()
        self._links.clear()

    async def _restore(self) -> None:
        was = self._mode
        self._mode = None
        for link in list(self._links):  # black-holed connections: clients must reconnect
            link.abort()
        self._links.clear()
        if was == "refuse" or self._server is None:
            await self._listen()

    async def _shutdown(self) -> None:
        await self._close_server()
        for link in list(self._links):
            link.abort()
        self._links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        if self._mode == "refuse":  # raced with a cut
            self.stats.refused += 1
            writer.transport.abort()
            return
        self._links.add(link)
        if self._mode == "blackhole":
            self.stats.blackholed += 1
            with contextlib.suppress(Exception):
                while await reader.read(_CHUNK):  # swallow, never answer
                    pass
            self._links.discard(link)
            writer.transport.abort()
            return
        self.stats.accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), 5
            )
        except (OSError, TimeoutError):
            self._links.discard(link)
            writer.transport.abort()
            return
        link.upstream = up_writer
        for sock_writer in (writer, up_writer):
            raw = sock_writer.get_extra_info("socket")
            if raw is not None:
                with contextlib.suppress(OSError):
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, up=True)),
            asyncio.create_task(self._pump(up_reader, writer, up=False)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Copy one direction; with latency, each chunk is written `latency` seconds after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                await queue.put((time.monotonic() + self.latency, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            writer.transport.abort()  # one side closed: close the other, as a cut cable would
