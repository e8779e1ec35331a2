"""A server of the tests' own (a TCP proxy, a TLS gate) running its asyncio loop in a daemon thread, so it
keeps serving whatever the test's own loop is doing (blocking calls included). Subclasses implement
`_listen()` and `_shutdown()` as coroutines on that loop; their public methods go through `_call`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    listen_port: int

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _listen(self) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def _start_loop(self, name: str) -> None:
        """Start the loop's thread, wait until it runs, then listen on it."""
        self._loop = loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"{name}-{self.listen_port}", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError(f"{name} loop did not start")
        self._call(self._listen())

    def stop(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop.close()
        self._loop = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self._loop is not None, f"{type(self).__name__} not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
