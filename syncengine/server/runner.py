"""Running the reference server on uvicorn inside an asyncio program.

:class:`ServerHandle` starts and stops one server on the current event loop, on a socket it
binds itself, so that a restart comes back on the same port with the same data directory.
It installs no signal handler: the caller decides what a signal means (``syncengine serve``
stops cleanly; a test never sees signals captured behind its back).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Iterator

import uvicorn

from syncengine.server.app import create_app
from syncengine.server.config import FaultConfig, ServerConfig
from syncengine.server.guard import (
    ConnectionGuard,
    connection_limits,
    descriptor_limit,
    guarded_protocols,
)
from syncengine.server.service import ServerService as ServerCore
from syncengine.server.storage import ServerStorage, open_storage

__all__ = ["LISTEN_BACKLOG", "ServerHandle"]

#: Connections the kernel queues for accepting (uvicorn's default backlog).
LISTEN_BACKLOG = 2048


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers, and quick to stop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_requested = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals to the program that runs the server."""
        yield

    async def main_loop(self) -> None:
        """uvicorn's tick loop (ten ticks a second), woken at once by :meth:`request_exit`."""
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit_requested.wait(), 0.1)

    def request_exit(self) -> None:
        """Begin a graceful shutdown now."""
        self.should_exit = True
        self.exit_requested.set()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only when it does, and
    # without it every small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class ServerHandle:
    """One reference server on the running event loop; start, stop and restart it.

    Args:
        config: the configuration. With ``port=0`` a free port is chosen at the first
            start and kept for restarts.

    Attributes:
        config: the configuration (``config.port`` is the real port once started).
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._core: ServerCore | None = None
        self._offline_state: ServerStorage | None = None
        self.guard: ConnectionGuard | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (known after the first start)."""
        return self.config.port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT/v1/live``."""
        return "ws" + self.url.removeprefix("http") + "/v1/live"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    @property
    def core(self) -> ServerCore:
        """The running server's core (storage, hub, limiters).

        Raises:
            RuntimeError: when the server is not running.
        """
        if self._core is None:
            raise RuntimeError("the server is not running")
        return self._core

    @property
    def state(self) -> ServerStorage:
        """The server's storage: the oracle of what the server holds.

        While the server is stopped, the same data directory is opened on its own, so tests
        can inspect the truth between a stop and a restart.
        """
        if self._core is not None:
            return self._core.storage
        if self._offline_state is None:
            self._offline_state = open_storage(self.config)
        return self._offline_state

    @property
    def faults(self) -> FaultConfig:
        """The mutable fault configuration (kept across restarts)."""
        return self.config.faults

    async def start(self) -> None:
        """Start listening; returns once the server accepts connections.

        Raises:
            RuntimeError: when already running or when the server failed to start.
            OSError: when the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the server is already running")
        if self._offline_state is not None:
            self._offline_state.close()
            self._offline_state = None
        sock = _bind(self.config.host, self.config.port)
        self.config.port = sock.getsockname()[1]
        app = create_app(self.config)
        self._core = app.state.core
        config = self.config
        limits = connection_limits(
            descriptor_limit(), config.max_connections, config.max_connections_per_ip
        )
        self.guard = ConnectionGuard(limits, header_timeout_s=config.header_timeout_s)
        http_protocol, ws_protocol = guarded_protocols(self.guard)
        uv_config = uvicorn.Config(
            app,
            log_config=None,
            lifespan="on",
            http=http_protocol,
            ws=ws_protocol,
            ws_max_size=config.ws_max_frame_bytes,
            ws_ping_interval=config.ws_ping_interval_s,
            ws_ping_timeout=config.ws_ping_timeout_s,
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=int(config.shutdown_timeout_s) or None,
            timeout_keep_alive=max(1, math.ceil(config.keep_alive_timeout_s)),
            h11_max_incomplete_event_size=config.max_header_bytes,
            # The listen backlog is also how many connections asyncio accepts in one go.
            backlog=limits.accept_batch,
            proxy_headers=config.forwarded_allow_ips is not None,
            forwarded_allow_ips=config.forwarded_allow_ips,
        )
        server = _Server(uv_config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="syncengine-server")
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            sock.close()
            self._core.close()
            self._core = None
            exc = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"the server failed to start: {exc!r}")
        # asyncio took ``backlog`` as both the kernel's queue and the connections it accepts
        # per wake-up. Only accepted ones hold a descriptor: let the kernel queue as many as
        # uvicorn's default, so a burst of connects is not dropped (a 1 s SYN retry).
        with contextlib.suppress(OSError):
            sock.listen(LISTEN_BACKLOG)
        self._server, self._task = server, task

    async def stop(self) -> None:
        """Stop the server: close live connections (``1012``), wait for requests, close."""
        server, task, core = self._server, self._task, self._core
        if server is None or task is None:
            return
        self._server = self._task = None
        server.request_exit()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.config.shutdown_timeout_s + 5)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            if core is not None and not core.storage.closed:
                core.close()
            self._core = None

    def close_state(self) -> None:
        """Close the storage opened by :attr:`state` while the server was stopped."""
        if self._offline_state is not None:
            self._offline_state.close()
            self._offline_state = None

    def drop_live_connections(self, code: int = 1012, reason: str = "dropped") -> int:
        """Close every live connection now (as a restart would); returns how many."""
        return self.core.hub.close_all(code, reason)
