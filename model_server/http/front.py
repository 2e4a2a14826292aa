"""Serving the HTTP app with uvicorn inside `bertmesh serve`'s event loop, beside gRPC.

The socket is bound before the model loads (callers see 503, not a refused connection), and stopping works as
gRPC's drain does: stop accepting, let accepted requests finish within the grace period. Signals stay
`bertmesh serve`'s: uvicorn's own handlers would take SIGTERM from the server's drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from model_server.errors import ConfigError
from model_server.http.middleware import Asgi

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers, telling when it accepts."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.accepting = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Starts listening, then says so."""
        await super().startup(sockets)
        self.accepting.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Leaves SIGTERM and SIGINT to `bertmesh serve`."""
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; ConfigError naming --http-port when it is taken."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"--http-port {port}: cannot listen on {host}:{port} ({exc.strerror}); choose another --http-port, "
            "or 0 for none"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpFront:
    """The HTTP listener: started once, stopped by draining."""

    def __init__(self, app: Asgi, sock: socket.socket, grace_seconds: float) -> None:
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(
            app,
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=max(int(grace_seconds), 1),
            timeout_keep_alive=30,
        )
        # uvicorn's start and stop lines at INFO would repeat what `bertmesh serve` logs itself.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts accepting on the bound socket and returns once it does."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        accepting = asyncio.create_task(self._server.accepting.wait())
        await asyncio.wait({self._task, accepting}, return_when=asyncio.FIRST_COMPLETED)
        accepting.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def stop(self) -> None:
        """Stops accepting, finishes the requests already accepted (within the grace period), closes."""
        if self._task is None:
            self._sock.close()
            return
        self._server.should_exit = True
        await self._task
