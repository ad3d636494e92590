"""An in-process HTTP server on 127.0.0.1 for an ASGI app (uvicorn), started and stopped by
tests and the demo: the receiver and the tests' token endpoint are two of them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

import uvicorn


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the host process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LoopbackServer:
    """Serves :attr:`app` on 127.0.0.1:``port`` (0: a free port, known once started)."""

    app: Any
    """The ASGI app to serve (set by the subclass)."""

    def __init__(self, *, port: int = 0) -> None:
        self.port = port
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve until :meth:`stop`."""
        # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
        # that say they are TCP, and an answer's body, written after its headers, would wait for
        # the client's delayed ACK (40 ms) on every request of a kept-alive connection.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises why the server did not start
                raise RuntimeError(f"{type(self).__name__} stopped before it started")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop serving and wait for the server to finish."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
