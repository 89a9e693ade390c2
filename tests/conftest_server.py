"""Helpers for the reference server's tests (imported by tests/test_server_*.py).

``Api`` wraps an ``httpx.AsyncClient`` pointed at a server (in-process through
``httpx.ASGITransport``, or a real uvicorn on 127.0.0.1) with the few calls the tests repeat.
``open_api(kind, tmp_path, **overrides)`` opens one of either kind.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
from websockets.asyncio.client import ClientConnection, connect

from syncengine.models import new_id
from syncengine.server.app import create_app
from syncengine.server.config import ServerConfig
from syncengine.server.storage import Storage
from syncengine.server.testing import TEST_DEFAULTS, ServerHandle, run_server

TRANSPORTS = ["asgi", "uvicorn"]


@attrs.define
class Api:
    """A client of one server, with helpers for the calls tests repeat.

    Attributes:
        client: the HTTP client (base URL set).
        state: the server's storage, the oracle.
        server: the uvicorn server handle, or None in-process.
    """

    client: httpx.AsyncClient
    state: Storage
    server: ServerHandle | None = None
    tokens: dict[str, str] = attrs.field(factory=dict)

    async def login(self, user: str, device: str = "dev", password: str = "pw") -> str:
        """Log ``user`` in (creating it) and remember the token for :meth:`auth`."""
        response = await self.client.post(
            "/v1/login", json={"user": user, "password": password, "device": device}
        )
        assert response.status_code == 200, response.text
        token = str(response.json()["token"])
        self.tokens[user if device == "dev" else f"{user}/{device}"] = token
        return token

    def auth(self, who: str) -> dict[str, str]:
        """The Authorization header of a logged-in user (``user`` or ``user/device``)."""
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def create(self, who: str, members: list[str], title: str = "t") -> str:
        """Create a conversation as ``who`` with ``members``; returns its id."""
        cid = new_id()
        response = await self.client.post(
            "/v1/conversations",
            json={"id": cid, "title": title, "members": members},
            headers=self.auth(who),
        )
        assert response.status_code == 201, response.text
        return cid

    async def ops(self, who: str, *ops: dict[str, Any]) -> list[dict[str, Any]]:
        """Push operations as ``who``; returns the per-op results."""
        response = await self.client.post(
            "/v1/ops", json={"ops": list(ops)}, headers=self.auth(who)
        )
        assert response.status_code == 200, response.text
        return list(response.json()["results"])

    async def send(
        self, who: str, cid: str, body: str = "hello", op_id: str | None = None
    ) -> dict[str, Any]:
        """Send one message; returns its result."""
        op = {"op_id": op_id or new_id(), "kind": "send", "conversation_id": cid, "body": body}
        (result,) = await self.ops(who, op)
        return result

    async def pull(self, who: str, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """One page of ``GET /v1/events``."""
        params: dict[str, Any] = {"since": since}
        if limit is not None:
            params["limit"] = limit
        response = await self.client.get("/v1/events", params=params, headers=self.auth(who))
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def pull_all(self, who: str, since: int = 0) -> list[dict[str, Any]]:
        """Every event visible to ``who`` after ``since``, following ``next``."""
        events: list[dict[str, Any]] = []
        while True:
            page = await self.pull(who, since)
            events.extend(page["events"])
            since = page["next"]
            if not page["has_more"]:
                return events


def make_config(tmp_path: Path, **overrides: Any) -> ServerConfig:
    """A test configuration in ``tmp_path/server``."""
    return ServerConfig(data_dir=tmp_path / "server", **{**TEST_DEFAULTS, **overrides})


@contextlib.asynccontextmanager
async def open_api(kind: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[Api]:
    """An :class:`Api` on an in-process app (``"asgi"``) or a real uvicorn (``"uvicorn"``)."""
    if kind == "asgi":
        app = create_app(make_config(tmp_path, **overrides))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield Api(c, app.state.core.storage)
        finally:
            app.state.core.close()
        return
    async with (
        run_server(tmp_path / "server", **overrides) as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        yield Api(client, srv.state, srv)


async def live(
    url: str, token: str | None, **kwargs: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Open a live connection, authenticate, and return it with its ``ready`` frame."""
    ws = await connect(url, compression=None, open_timeout=5, close_timeout=2, **kwargs)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws, ready


async def next_frame(ws: ClientConnection, *types: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of one of ``types`` (others are skipped)."""
    import asyncio

    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if not types or frame["type"] in types:
                return dict(frame)
