"""The reference server's real ASGI app behind a small wrapper, on uvicorn on 127.0.0.1.

The scenarios of ``tests/scenarios/`` that need the server to misbehave in one precise way (a
plain ``500`` on a push, a live frame that never leaves, a count of the pulls it served) wrap
the real application (:func:`syncengine.server.app.create_app`) instead of patching the
engine: the engine only sees bytes on a socket, so the scenarios survive its restructuring.

- ``async with wrapped_server(tmp_path, wrap, **config) as srv:`` runs ``wrap(app)`` on a free
  port; ``srv.url``, ``srv.storage`` (the server's truth).
- ``async with serve_asgi(app) as port:`` runs any ASGI app the same way.
- :class:`PlainStatus`: answer chosen ``POST /v1/ops`` requests with a bare status and a
  non-JSON body, before the app handles them or after (the effect committed, the answer lost).
- :class:`DropLiveFrame`: swallow the live frames whose text contains a marker.
- :class:`CountRequests`: record the method, path and query of every HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncengine.server.app import create_app
from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS

__all__ = [
    "CountRequests",
    "DropLiveFrame",
    "PlainStatus",
    "WrappedServer",
    "serve_asgi",
    "wrapped_server",
]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave signals to pytest
        yield


@attrs.define
class WrappedServer:
    """A running wrapped server: its URL and port, the server's storage (the truth tests
    compare with: ``all_messages(cid)``, ``head``) and the outermost app (the wrapper)."""

    url: str
    port: int
    storage: Any
    app: ASGIApp


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, *, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[int]:
    """Run ``app`` on uvicorn on 127.0.0.1 (a free port) on this event loop; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = _Server(
        uvicorn.Config(
            app,
            log_config=None,
            lifespan=lifespan,
            ws="websockets-sansio",
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    raise RuntimeError(f"the server did not start: {task.exception()!r}")
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(15):
                await task
        except TimeoutError:
            task.cancel()
        sock.close()


@contextlib.asynccontextmanager
async def wrapped_server(
    tmp_path: Path, wrap: Callable[[ASGIApp], ASGIApp] = lambda app: app, **overrides: Any
) -> AsyncIterator[WrappedServer]:
    """The reference server (``ServerConfig(**TEST_DEFAULTS, **overrides)``) as ``wrap(app)``."""
    config = ServerConfig(data_dir=tmp_path / "server", **{**TEST_DEFAULTS, **overrides})
    inner = create_app(config)
    outer = wrap(inner)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # The lifespan (which closes the storage) is the inner app's.
        await (inner if scope["type"] == "lifespan" else outer)(scope, receive, send)

    async with serve_asgi(app, lifespan="on") as port:
        yield WrappedServer(f"http://127.0.0.1:{port}", port, inner.state.core.storage, outer)


class PlainStatus:
    """Answer ``POST /v1/ops`` with ``statuses`` in turn (one request each), then pass through.

    ``after=False``: the request never reaches the app (nothing applied). ``after=True``: the
    app handles it (the effect is committed) and its answer is replaced (a lost ack).
    The body is ``text/plain``, as a proxy or a crashed worker would send it.
    """

    def __init__(self, app: ASGIApp, statuses: list[int], *, after: bool = False) -> None:
        self.app = app
        self.statuses = list(statuses)
        self.after = after
        self.answered: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            self.statuses
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/v1/ops"
        ):
            await self.app(scope, receive, send)
            return
        status = self.statuses.pop(0)
        if self.after:

            async def swallow(_message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
        body = f"{status} Internal failure".encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.answered.append(status)


class DropLiveFrame:
    """Swallow the outgoing live frames whose text contains ``marker`` (``dropped`` counts)."""

    def __init__(self, app: ASGIApp, marker: str) -> None:
        self.app = app
        self.marker = marker
        self.dropped = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        async def filtered(message: Message) -> None:
            if message["type"] == "websocket.send" and self.marker in (message.get("text") or ""):
                self.dropped += 1
                return
            await send(message)

        await self.app(scope, receive, filtered)


class CountRequests:
    """Record ``(method, path, query)`` of every HTTP request, in arrival order."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[tuple[str, str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append(
                (scope["method"], scope["path"], scope.get("query_string", b"").decode())
            )
        await self.app(scope, receive, send)
