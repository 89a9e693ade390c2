"""Helpers that run the reference server for tests and demos.

- ``async with run_server(tmp_path) as srv:`` runs a real uvicorn server on 127.0.0.1 (a
  free port) on the current event loop; ``srv.url``, ``srv.ws_url``, ``srv.state`` (the
  server's truth), ``srv.faults``, ``await srv.stop()`` / ``await srv.start()`` (a restart on
  the same port and data directory).
- ``ServerThread(config)`` runs the same server on its own thread and event loop, for
  callers that are not async (``with ServerThread(config) as srv: ...``).

The server's truth, for test oracles, is ``srv.state`` (a
:class:`~syncengine.server.storage.Storage`): ``all_messages(conversation_id)``,
``all_events()``, ``all_conversations()``, ``op_result(user, device, op_id)``, ``users()``,
``head``. Its methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from os import PathLike
from typing import Any, TypeVar

import httpx

from syncengine.server.config import FaultConfig, ServerConfig
from syncengine.server.runner import ServerHandle
from syncengine.server.storage import Storage

__all__ = ["TEST_DEFAULTS", "ServerHandle", "ServerThread", "login", "run_server"]

T = TypeVar("T")

#: Overrides that :func:`run_server` applies unless told otherwise: loopback, a free port,
#: cheap password hashing, a short shutdown, and members who may log in after being added
#: (tests create a conversation with bob before bob's engine first logs in; a test of the
#: refusal turns ``refuse_unknown_members`` back on).
TEST_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "scrypt_n": 1 << 10,
    "shutdown_timeout_s": 2.0,
    "refuse_unknown_members": False,
}


async def login(url: str, user: str, password: str = "secret", device: str = "test") -> str:
    """Log in over HTTP (creating the user on an open server) and return the token."""
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/login", json={"user": user, "password": password, "device": device}
        )
        response.raise_for_status()
        return str(response.json()["token"])


@contextlib.asynccontextmanager
async def run_server(
    data_dir: str | PathLike[str], **overrides: Any
) -> AsyncIterator[ServerHandle]:
    """Run a reference server on this event loop for the duration of the block.

    Args:
        data_dir: the server's data directory (e.g. pytest's ``tmp_path``).
        **overrides: :class:`ServerConfig` fields (``retention=10``, ``typing_ttl_s=0.2``,
            ``faults=FaultConfig(error_rate=0.1)``, …) over :data:`TEST_DEFAULTS`.

    Yields:
        The running server's handle.
    """
    handle = ServerHandle(ServerConfig(data_dir=data_dir, **{**TEST_DEFAULTS, **overrides}))
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()
        handle.close_state()


class ServerThread:
    """The reference server on a thread of its own, for callers that are not async.

    Args:
        config: the configuration (use ``port=0`` for a free port).
    """

    def __init__(self, config: ServerConfig) -> None:
        self.handle = ServerHandle(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return self.handle.url

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT/v1/live``."""
        return self.handle.ws_url

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self.handle.port

    @property
    def state(self) -> Storage:
        """The server's storage (thread-safe), see :attr:`ServerHandle.state`."""
        return self.handle.state

    @property
    def faults(self) -> FaultConfig:
        """The mutable fault configuration."""
        return self.handle.faults

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start the server; returns once it accepts connections.

        Raises:
            RuntimeError: when it is already started or failed to start.
        """
        if self._thread is not None:
            raise RuntimeError("the server thread is already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name="syncengine-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the server did not start in time")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"the server failed to start: {self._error!r}") from self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and join its thread. Idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = None
        self.handle.close_state()

    def call(self, func: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``func`` on the server's loop and return its result (e.g. to poke the hub)."""
        if self._loop is None:
            raise RuntimeError("the server thread is not running")

        async def run() -> T:
            return func()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def drop_live_connections(self, code: int = 1012, reason: str = "dropped") -> int:
        """Close every live connection now; returns how many."""
        return self.call(lambda: self.handle.drop_live_connections(code, reason))

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.handle.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.handle.stop()

        try:
            asyncio.run(serve())
        finally:
            self._loop = None
