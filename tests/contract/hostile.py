"""A hostile server for hostile-input scenarios: it plays scripted frames and responses.

It speaks just enough of protocol v1 (login, conversations, presence, history, push, pull and
the live channel) for an engine to reach LIVE, and lets the test put anything on the wire:

- ``srv.log``: the durable event log served by ``GET /v1/events``, as raw JSON *texts* (so a
  test can serve what no encoder would write); :meth:`HostileServer.append` adds a valid one.
- ``await srv.live(frame)``: send a frame on every live connection: a ``str`` is sent as a
  text frame verbatim, ``bytes`` as a binary frame, a ``dict`` as JSON.
- ``srv.page_override``: a callable that returns the raw body (and status) of the next pull.
- pushes are applied like the real server (dedup on op id): a ``message_received`` event is
  logged (and sent live) for each new send; ``srv.fail_pushes`` answers them 503 instead,
  ``srv.push_override`` with a raw body (nothing applied).

Runs on 127.0.0.1, port 0, on the caller's event loop, with a tiny uvicorn server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from syncengine.models import new_id

__all__ = ["HostileServer"]

TOKEN = "hostile-token-0123456789abcdef"
Frame = str | bytes | dict[str, Any]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


class HostileServer:
    """A scripted protocol-v1 server (see the module docstring).

    Args:
        user: the user every login is accepted as.
    """

    def __init__(self, user: str = "alice") -> None:
        self.user = user
        self.conversation_id = new_id()
        self.log: list[tuple[int, str]] = []  # (pos, raw JSON text)
        self.page_override: Callable[[int], tuple[int, bytes]] | None = None
        self.fail_pushes = False  # answer every push 503 (nothing applied)
        self.push_override: Callable[[], bytes] | None = None  # a raw 200 body for pushes
        self.requests: list[str] = []
        self.connections: set[asyncio.Queue[Frame | None]] = set()
        self.live_connects = 0
        self._seq = itertools.count(1)
        self._ops: dict[str, dict[str, Any]] = {}
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        self.append_conversation()

    # --- the log ---------------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self.log[-1][0] if self.log else 0

    def append_raw(self, text: str, pos: int | None = None) -> int:
        """Log a raw event text at ``pos`` (default: the next position)."""
        pos = self.head + 1 if pos is None else pos
        self.log.append((pos, text))
        return pos

    def event(self, kind: str = "message_received", **fields: Any) -> dict[str, Any]:
        """A valid durable event at the next position (not logged)."""
        pos = self.head + 1
        seq = next(self._seq)
        base: dict[str, Any] = {
            "type": kind,
            "pos": pos,
            "conversation_id": self.conversation_id,
            "seq": seq,
            "ts_ms": 1_764_100_000_000 + pos,
        }
        if kind == "message_received":
            base.update(message_id=new_id(), op_id=None, sender="mallory", body=f"valid {pos}")
        base.update(fields)
        return base

    def append(self, **fields: Any) -> dict[str, Any]:
        """Log a valid event (and return it)."""
        ev = self.event(**fields)
        self.append_raw(orjson.dumps(ev).decode(), ev["pos"])
        return ev

    def append_conversation(self) -> None:
        self.append(
            kind="conversation_updated",
            title="hostile",
            members=sorted({self.user, "mallory"}),
            actor="mallory",
        )

    def valid_messages(self) -> list[dict[str, Any]]:
        """The ``message_received`` events of the log that are valid JSON, in log order, each
        message once (by id): what a store should end up holding."""
        out: dict[str, dict[str, Any]] = {}
        for _pos, text in self.log:
            try:
                ev = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if (
                isinstance(ev, dict)
                and ev.get("type") == "message_received"
                and type(ev.get("seq")) is int
            ):
                out.setdefault(ev["message_id"], ev)
        return sorted(out.values(), key=lambda e: e["seq"])

    # --- live ------------------------------------------------------------------------------

    async def live(self, *frames: Frame) -> None:
        """Send ``frames`` on every open live connection, in order."""
        for frame in frames:
            for queue in list(self.connections):
                queue.put_nowait(frame)
        await asyncio.sleep(0)

    def close_live(self) -> None:
        for queue in list(self.connections):
            queue.put_nowait(None)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> HostileServer:
        app = Starlette(
            routes=[
                Route("/v1/health", self._health, methods=["GET"]),
                Route("/v1/login", self._login, methods=["POST"]),
                Route("/v1/conversations", self._conversations, methods=["GET"]),
                Route("/v1/presence", self._presence, methods=["GET"]),
                Route("/v1/conversations/{cid}/messages", self._history, methods=["GET"]),
                Route("/v1/ops", self._ops_endpoint, methods=["POST"]),
                Route("/v1/events", self._events, methods=["GET"]),
                WebSocketRoute("/v1/live", self._live),
            ]
        )
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            lifespan="off",
            ws_max_size=1 << 20,
            ws_per_message_deflate=False,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(10):
            while not self._server.started:
                await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.close_live()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                async with asyncio.timeout(10):
                    await self._task
            except TimeoutError:
                self._task.cancel()

    async def __aenter__(self) -> HostileServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- endpoints -------------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return _json({"ok": True, "head": self.head})

    async def _login(self, request: Request) -> Response:
        self.requests.append("login")
        return _json({"token": TOKEN, "user": self.user, "device": "d", "expires_in_s": 3600})

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    async def _conversations(self, request: Request) -> Response:
        self.requests.append("conversations")
        conv = {
            "id": self.conversation_id,
            "title": "hostile",
            "members": sorted({self.user, "mallory"}),
            "last_seq": 0,
            "created_by": "mallory",
        }
        return _json({"conversations": [conv], "head": self.head})

    async def _presence(self, request: Request) -> Response:
        return _json({"presence": []})

    async def _history(self, request: Request) -> Response:
        before = int(request.query_params.get("before") or 1 << 62)
        msgs = [
            {
                "message_id": e["message_id"],
                "conversation_id": e["conversation_id"],
                "seq": e["seq"],
                "op_id": e.get("op_id"),
                "sender": e["sender"],
                "body": e["body"],
                "ts_ms": e["ts_ms"],
                "edited_ms": None,
                "deleted": False,
            }
            for e in self.valid_messages()
            if e["seq"] < before and e["conversation_id"] == request.path_params["cid"]
        ]
        return _json({"messages": msgs, "end_of_history": True})

    async def _ops_endpoint(self, request: Request) -> Response:
        self.requests.append("ops")
        if not self._authorized(request):
            return _json({"code": "unauthorized", "reason": "no"}, 401)
        if self.fail_pushes:
            return _json({"code": "unavailable", "reason": "scripted"}, 503)
        if self.push_override is not None:
            return Response(self.push_override(), 200, media_type="application/json")
        body = orjson.loads(await request.body())
        results = []
        for op in body["ops"]:
            done = self._ops.get(op["op_id"])
            if done is not None:
                results.append({**done, "status": "duplicate"})
                continue
            if op["kind"] != "send":
                result = {"op_id": op["op_id"], "status": "applied"}
            else:
                ev = self.append(
                    op_id=op["op_id"],
                    sender=self.user,
                    body=op["body"],
                    conversation_id=op["conversation_id"],
                )
                await self.live(ev)
                result = {
                    "op_id": op["op_id"],
                    "status": "applied",
                    "conversation_id": ev["conversation_id"],
                    "message_id": ev["message_id"],
                    "seq": ev["seq"],
                    "pos": ev["pos"],
                    "ts_ms": ev["ts_ms"],
                }
            self._ops[op["op_id"]] = result
            results.append(result)
        return _json({"results": results})

    async def _events(self, request: Request) -> Response:
        self.requests.append("events")
        since = int(request.query_params.get("since", "0"))
        limit = int(request.query_params.get("limit", "500"))
        if self.page_override is not None:
            status, raw = self.page_override(since)
            return Response(raw, status, media_type="application/json")
        if since > self.head:  # like the real server: a cursor from the future is expired
            return _json(
                {"code": "cursor_expired", "reason": "ahead of the log", "oldest_pos": 1}, 410
            )
        rows = [(p, t) for p, t in self.log if p > since]
        page, more = rows[:limit], len(rows) > limit
        nxt = page[-1][0] if more else max(self.head, since)
        body = b'{"events":[%s],"next":%d,"has_more":%s}' % (
            ",".join(t for _, t in page).encode(),
            nxt,
            b"true" if more else b"false",
        )
        return Response(body, 200, media_type="application/json")

    async def _live(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            auth = orjson.loads(await ws.receive_text())
        except (WebSocketDisconnect, orjson.JSONDecodeError):
            return
        if auth.get("token") != TOKEN:
            await ws.close(1008, "unauthorized")
            return
        self.live_connects += 1
        queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.connections.add(queue)
        reader = asyncio.create_task(self._drain(ws, queue))
        try:
            await ws.send_text(
                orjson.dumps(
                    {"type": "ready", "user": self.user, "device": "d", "head": self.head}
                ).decode()
            )
            while True:
                frame = await queue.get()
                if frame is None:
                    await ws.close(1012, "bye")
                    return
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                elif isinstance(frame, str):
                    await ws.send_text(frame)
                else:
                    await ws.send_text(orjson.dumps(frame).decode())
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            self.connections.discard(queue)
            reader.cancel()

    async def _drain(self, ws: WebSocket, queue: asyncio.Queue[Frame | None]) -> None:
        """Read (and ignore) what the client sends; end the connection when it leaves."""
        with contextlib.suppress(Exception):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        queue.put_nowait(None)
