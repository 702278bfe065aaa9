"""Run an ASGI app with uvicorn on 127.0.0.1 in a background thread.

The server owns its own event loop in a daemon thread, so it keeps answering
while a test blocks in synchronous code *or* while an async test awaits on its
own loop (pytest-asyncio). Usage::

    with BackgroundServer(app) as server:
        httpx.get(server.base_url + "/ping")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp

_HOST = "127.0.0.1"


class BackgroundServer:
    """uvicorn on a free loopback port; ``start()``/``stop()`` or ``with``."""

    def __init__(self, app: ASGIApp, *, startup_timeout: float = 10.0) -> None:
        self.app = app
        self.startup_timeout = startup_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("server already started")
        # Binding the socket ourselves (port 0) avoids the race of "find a free
        # port, then hope nobody takes it before uvicorn binds it".
        sock = _bind_loopback()
        self._port = sock.getsockname()[1]
        self._server = _Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name=f"fake-http-{self._port}",
        )
        self._thread.start()
        self._wait_until_ready()
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        # The server's loop wakes at once (see _Server), closes idle keep-alive
        # connections and the listening socket.
        self._server.stop()
        self._thread.join(timeout=10)
        self._server = self._thread = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _config(self) -> uvicorn.Config:
        # lifespan off: the fakes keep state in plain attributes, no startup hooks.
        # ws none: avoids importing websockets for an HTTP-only fake.
        return uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
        )

    def _wait_until_ready(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._server = self._thread = None
                raise RuntimeError("uvicorn thread died during startup (see log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("uvicorn did not start in time")
            time.sleep(0.005)
        # Belt and braces: prove the port really accepts a TCP connection.
        with socket.create_connection((_HOST, self.port), timeout=self.startup_timeout):
            pass


class _Server(uvicorn.Server):
    """uvicorn's server with two of its fixed waits made events: its main loop looks at
    ``should_exit`` every 0.1 s, and its shutdown gives closed connections 0.1 s to go.
    Here :meth:`stop` wakes the main loop, and the shutdown lets the loop turn once (an
    idle connection is gone then) before uvicorn's own wait for what is still open."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._woken: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """From any thread: exit now."""
        self.should_exit = True
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            loop.call_soon_threadsafe(woken.set)

    async def main_loop(self) -> None:
        self._woken = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):  # on_tick keeps the Date header fresh
                await asyncio.wait_for(self._woken.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await asyncio.sleep(0)  # an idle connection's close runs on this turn of the loop
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                await self._wait_tasks_to_complete()
        except TimeoutError:
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


def _bind_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((_HOST, 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
