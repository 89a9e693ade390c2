"""The live channel's boundary: refused handshakes, close codes, bad URLs, the first frame.

A WebSocket handshake cannot be faked as cheaply as an HTTP answer, so these tests run a tiny
websockets server on 127.0.0.1 (port 0) that refuses, closes or answers exactly as each case
needs; what a refusal *means* is the status table's (``tests/test_policy.py``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from syncengine.errors import (
    AuthFailed,
    ServerUnavailable,
    SyncEngineError,
    UsageError,
    WireError,
)
from syncengine.transport.base import LiveUnavailable
from syncengine.transport.live import WebSocketLink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

Handler = Callable[[ServerConnection], Awaitable[None]]


async def _ready(ws: ServerConnection) -> None:
    first = orjson.loads(await ws.recv())
    assert first == {"type": "auth", "token": "tok"}
    await ws.send(orjson.dumps({"type": "ready", "head": 12}).decode())
    await ws.wait_closed()


class LiveServer:
    def __init__(self) -> None:
        self.refuse: int | None = None
        self.handler: Handler = _ready
        self.seen: list[Any] = []
        self.port = 0

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.refuse is None:
            return None
        return conn.respond(HTTPStatus(self.refuse), "no\n")

    async def handle(self, ws: ServerConnection) -> None:
        await self.handler(ws)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/live"


@pytest.fixture
async def live() -> AsyncIterator[LiveServer]:
    state = LiveServer()
    async with serve(state.handle, "127.0.0.1", 0, process_request=state.process_request) as srv:
        state.port = srv.sockets[0].getsockname()[1]
        yield state


async def connect(url: str, **kwargs: Any) -> WebSocketLink:
    return await WebSocketLink.connect(url, token="tok", ssl_context=None, **kwargs)


async def test_the_token_goes_in_the_first_frame_and_ready_gives_head(live: LiveServer) -> None:
    link = await connect(live.url)
    assert link.head == 12
    await link.close()
    await link.close()  # closing twice never raises


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthFailed),
        (500, ServerUnavailable),
        (502, ServerUnavailable),
        (503, ServerUnavailable),
        (400, LiveUnavailable),
        (403, LiveUnavailable),
        (404, LiveUnavailable),
        (408, LiveUnavailable),
        (429, LiveUnavailable),
    ],
)
async def test_a_refused_handshake_follows_the_status_table(
    live: LiveServer, status: int, error: type[Exception]
) -> None:
    live.refuse = status
    with pytest.raises(error) as info:
        await connect(live.url)
    assert type(info.value) is error
    assert info.value.__cause__ is not None  # raised from the websockets exception


async def test_the_token_refused_by_a_close_frame_is_auth_failed(live: LiveServer) -> None:
    async def refuse(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1008, "unauthorized")

    live.handler = refuse
    with pytest.raises(AuthFailed):
        await connect(live.url)


async def test_a_link_closed_by_the_server_is_server_unavailable(live: LiveServer) -> None:
    async def then_close(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(orjson.dumps({"type": "ready", "head": 1}).decode())
        await ws.send(orjson.dumps({"type": "ready", "head": 2}).decode())
        await ws.close(1011, "going away")

    live.handler = then_close
    link = await connect(live.url)
    assert await link.recv() is None  # a frame that is not an event
    with pytest.raises(ServerUnavailable, match="1011 going away"):
        await link.recv()
    with pytest.raises(ServerUnavailable):
        await link.send_typing("c", True)
    await link.close()


async def test_a_first_frame_that_is_not_ready_is_a_wire_error(live: LiveServer) -> None:
    async def wrong(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send('{"type": "hello"}')
        await ws.wait_closed()

    live.handler = wrong
    with pytest.raises(WireError):
        await connect(live.url)


async def test_no_ready_frame_in_time_is_server_unavailable(live: LiveServer) -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    live.handler = silent
    with pytest.raises(ServerUnavailable, match="no ready frame"):
        await connect(live.url, open_timeout=0.3)


async def test_a_refused_port_is_server_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnavailable) as info:
        await connect(f"ws://127.0.0.1:{port}/v1/live")
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:99999/v1/live",
        "ws://127.0.0.1:abc/v1/live",
        "ws://[::1/v1/live",
        "http://127.0.0.1:1/v1/live",
    ],
)
async def test_a_malformed_live_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError) as info:
        await connect(url)
    assert isinstance(info.value, SyncEngineError)


async def test_what_cannot_be_json_is_a_usage_error_not_a_type_error(live: LiveServer) -> None:
    link = await connect(live.url)
    with pytest.raises(UsageError):
        await link.send_presence({"online"})  # type: ignore[arg-type]
    await link.close()
    await asyncio.sleep(0)
