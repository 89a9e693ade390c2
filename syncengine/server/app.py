"""The reference server's Starlette application: the routes of ``docs/protocol.md``.

Routes only: each one reads its request (size limits, JSON, path and query values), calls
the :class:`~syncengine.server.service.ServerService`, and encodes the typed answer with the
protocol's codec. Rules raise domain errors (:mod:`syncengine.protocol.errors`); they become
JSON ``{"code", "reason"}`` bodies with the status of
:data:`~syncengine.protocol.errors.ERROR_STATUS`, the one table. A bug answers
``500 internal`` without a traceback on the wire (the traceback goes to the log, redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from syncengine.errors import WireError
from syncengine.logs import install_redaction
from syncengine.protocol import codec, ops
from syncengine.protocol.bodies import ErrorBody, Health, HistoryPageWire
from syncengine.protocol.errors import (
    ERROR_STATUS,
    Internal,
    Invalid,
    InvalidJson,
    NotFound,
    Rejection,
    TooLarge,
)
from syncengine.server import rules
from syncengine.server.config import ServerConfig
from syncengine.server.faults import FaultMiddleware
from syncengine.server.live import CLOSE_POLICY, LiveConnection
from syncengine.server.service import ServerService

__all__ = ["ServerCore", "create_app", "error_response", "json_response"]

log = logging.getLogger("syncengine.server")

#: The service under its historical name.
ServerCore = ServerService


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(error: Rejection) -> Response:
    """The JSON response of a rejection (with ``Retry-After`` for ``rate_limited``)."""
    headers = None
    status = ERROR_STATUS[error.code]
    if status == 429:
        headers = {"Retry-After": str(math.ceil(error.extra.get("retry_after_ms", 1000) / 1000))}
    return json_response(error.body(), status, headers)


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(func: Callable[[ServerService, Request], Awaitable[Response]]) -> Handler:
    """Wrap a route: rejections become JSON bodies, bugs become ``500 internal``."""

    @functools.wraps(func)
    async def wrapper(request: Request) -> Response:
        try:
            return await func(request.app.state.core, request)
        except Rejection as exc:
            return error_response(exc)
        except ClientDisconnect:  # the client left mid-request: nobody reads the answer
            log.debug("client left during %s %s", request.method, request.url.path)
            return Response(status_code=499)
        except Exception:
            log.exception("internal error in %s %s", request.method, request.url.path)
            return error_response(Internal("internal server error"))

    return wrapper


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, within the size limit.

    Raises:
        TooLarge: over the limit.
        InvalidJson: not JSON.
        Invalid: not an object.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise TooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    try:
        obj = codec.decode_json(b"".join(chunks), limit=limit)
    except WireError as exc:
        raise InvalidJson(exc.reason) from None
    if not isinstance(obj, dict):
        raise Invalid("the body must be a JSON object")
    return obj


def _int_param(request: Request, name: str, default: int | None, minimum: int) -> int | None:
    return rules.check_query_int(name, request.query_params.get(name), default, minimum)


def _conversation_id(request: Request) -> str:
    cid = request.path_params["conversation_id"]
    if not ops.is_conversation_id(cid):
        raise NotFound("no such conversation")
    return str(cid)


def _user(core: ServerService, request: Request) -> tuple[str, str]:
    budget = rules.rate_budget(request.method, request.url.path)
    return core.authenticate(request.headers.get("authorization", ""), budget)


def _body(content: Any, status: int = 200) -> Response:
    return json_response(codec.encode_body(content), status)


# --- routes -------------------------------------------------------------------------------


@_endpoint
async def health(core: ServerService, _request: Request) -> Response:
    """``GET /v1/health``: no auth."""
    return _body(Health(ok=True, head=core.storage.head))


@_endpoint
async def login(core: ServerService, request: Request) -> Response:
    """``POST /v1/login``."""
    body = await _read_json(request, core.config.max_body_bytes)
    user = ops.check_user(body.get("user"))
    device = ops.check_device(body.get("device"))
    password = rules.check_password(body.get("password"))
    address = request.client.host if request.client else ""
    return _body(await core.login(user, password, device, address))


@_endpoint
async def list_conversations(core: ServerService, request: Request) -> Response:
    """``GET /v1/conversations``."""
    user, _device = _user(core, request)
    return _body(core.conversations(user))


@_endpoint
async def create_conversation(core: ServerService, request: Request) -> Response:
    """``POST /v1/conversations``: 201 created, 200 when the same creation is replayed."""
    user, _device = _user(core, request)
    body = await _read_json(request, core.config.max_body_bytes)
    cid = ops.check_conversation_id(body.get("id"))
    title = ops.check_title(body.get("title", ""))
    members = ops.check_members(body.get("members", []), user)
    conv, created = core.create_conversation(user, cid, title, members)
    return _body(conv, 201 if created else 200)


@_endpoint
async def rename_conversation(core: ServerService, request: Request) -> Response:
    """``PATCH /v1/conversations/{id}``."""
    user, _device = _user(core, request)
    cid = _conversation_id(request)
    body = await _read_json(request, core.config.max_body_bytes)
    if "title" not in body:
        raise Invalid("title is required")
    return _body(core.rename(user, cid, ops.check_title(body["title"])))


@_endpoint
async def add_member(core: ServerService, request: Request) -> Response:
    """``POST /v1/conversations/{id}/members``."""
    user, _device = _user(core, request)
    cid = _conversation_id(request)
    body = await _read_json(request, core.config.max_body_bytes)
    member = ops.check_user(body.get("user"))
    return _body(core.set_member(user, cid, member, present=True))


@_endpoint
async def remove_member(core: ServerService, request: Request) -> Response:
    """``DELETE /v1/conversations/{id}/members/{user}``."""
    user, _device = _user(core, request)
    cid = _conversation_id(request)
    member = ops.check_user(request.path_params["user"])
    return _body(core.set_member(user, cid, member, present=False))


@_endpoint
async def push_ops(core: ServerService, request: Request) -> Response:
    """``POST /v1/ops``: a batch of operations, one result each."""
    user, device = _user(core, request)
    raw_ops = ops.parse_batch(await _read_json(request, core.config.max_body_bytes))
    results = core.push(user, device, raw_ops)
    return json_response({"results": [codec.encode_op_result(r) for r in results]})


@_endpoint
async def pull_events(core: ServerService, request: Request) -> Response:
    """``GET /v1/events?since=&limit=&epoch=``."""
    user, _device = _user(core, request)
    since = _int_param(request, "since", 0, 0)
    limit = _int_param(request, "limit", ops.PULL_LIMIT_DEFAULT, 1)
    assert since is not None and limit is not None
    events, nxt, more = core.pull(user, since, limit, request.query_params.get("epoch"))
    # The events are stored as JSON text: the page is assembled around them, not re-encoded.
    body = b'{"events":[%s],"next":%d,"has_more":%s,"epoch":%s}' % (
        ",".join(events).encode(),
        nxt,
        b"true" if more else b"false",
        orjson.dumps(core.storage.epoch),
    )
    return Response(body, 200, media_type="application/json")


@_endpoint
async def history(core: ServerService, request: Request) -> Response:
    """``GET /v1/conversations/{id}/messages?before=&limit=``."""
    user, _device = _user(core, request)
    cid = _conversation_id(request)
    before = _int_param(request, "before", None, 1)
    limit = _int_param(request, "limit", ops.HISTORY_LIMIT_DEFAULT, 1)
    assert limit is not None
    messages, end = core.history(user, cid, before, limit)
    return _body(HistoryPageWire(messages=tuple(messages), end_of_history=end))


@_endpoint
async def presence(core: ServerService, request: Request) -> Response:
    """``GET /v1/presence``."""
    user, _device = _user(core, request)
    entries = [codec.encode_body(entry) for entry in core.presence(user)]
    return json_response({"presence": entries})


@_endpoint
async def list_blocks(core: ServerService, request: Request) -> Response:
    """``GET /v1/blocks``."""
    user, _device = _user(core, request)
    return _body(core.blocks(user))


@_endpoint
async def block(core: ServerService, request: Request) -> Response:
    """``PUT /v1/blocks/{user}``: the caller refuses to be added by ``user``."""
    user, _device = _user(core, request)
    other = ops.check_user(request.path_params["user"])
    return _body(core.set_block(user, other, blocked=True))


@_endpoint
async def unblock(core: ServerService, request: Request) -> Response:
    """``DELETE /v1/blocks/{user}``."""
    user, _device = _user(core, request)
    other = ops.check_user(request.path_params["user"])
    return _body(core.set_block(user, other, blocked=False))


# --- the live channel ---------------------------------------------------------------------


async def _authenticate_live(core: ServerService, websocket: WebSocket) -> LiveConnection | None:
    """Wait for the ``auth`` frame; register the connection, or close with 1008."""
    try:
        async with asyncio.timeout(core.config.ws_auth_timeout_s):
            message = await websocket.receive()
    except TimeoutError:
        await websocket.close(CLOSE_POLICY, "unauthorized")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    identity = None
    try:
        frame = codec.decode_frame(_frame_data(message))
        token = frame.get("token")
        if frame.get("type") == "auth" and isinstance(token, str):
            identity = core.authenticate_token(token)
    except WireError:
        pass
    if identity is None:
        await websocket.close(CLOSE_POLICY, "unauthorized")
        return None
    return core.hub.register(identity.user, identity.device, identity.expires_ms)


def _frame_data(message: Mapping[str, Any]) -> str | bytes:
    """The payload of an ASGI ``websocket.receive`` message (text, else bytes)."""
    text = message.get("text")
    return text if text is not None else message.get("bytes") or b""


def _error_frame(code: str, reason: str, retry_after_ms: int | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "reason": reason}
    if retry_after_ms is not None:
        frame["retry_after_ms"] = retry_after_ms
    return orjson.dumps(frame).decode()


def _handle_frame(core: ServerService, conn: LiveConnection, message: Mapping[str, Any]) -> None:
    """Act on one client frame after authentication."""
    wait = conn.bucket.take(time.monotonic())
    if wait > 0:
        conn.flood += 1
        if conn.flood >= core.config.ws_flood_limit:
            conn.close(CLOSE_POLICY, "rate_limited")
        else:
            conn.push(_error_frame("rate_limited", "too many frames", rules.retry_after_ms(wait)))
        return
    conn.flood = 0
    try:
        frame = codec.decode_frame(_frame_data(message))
    except WireError as exc:
        conn.push(_error_frame("invalid", str(exc)))
        return
    kind = frame.get("type")
    if kind == "typing":
        cid = frame.get("conversation_id")
        typing = frame.get("typing")
        if not isinstance(cid, str) or not isinstance(typing, bool):
            conn.push(_error_frame("invalid", "typing needs conversation_id and typing"))
            return
        try:
            core.typing(conn, cid, typing)
        except NotFound:
            conn.close(CLOSE_POLICY, "not_a_member")
    elif kind == "presence":
        status = frame.get("status")
        if status not in ("online", "away"):
            conn.push(_error_frame("invalid", "status must be online or away"))
        else:
            core.hub.set_status(conn.user, status)
    else:
        conn.push(_error_frame("invalid", f"unknown frame type {kind!r}"))


async def live(websocket: WebSocket) -> None:
    """``/v1/live``: authenticate, then deliver events and take typing/presence frames."""
    core: ServerService = websocket.app.state.core
    await websocket.accept()
    conn = await _authenticate_live(core, websocket)
    if conn is None:
        return
    sender = asyncio.create_task(conn.run_sender(websocket))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if conn.closing is None:
                _handle_frame(core, conn, message)
    except Exception:
        log.exception("live connection of %s/%s failed", conn.user, conn.device)
    finally:
        core.hub.unregister(conn)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


# --- the application ----------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method) as JSON rejections."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    body = ErrorBody(code=code, reason=str(exc.detail))
    return json_response(codec.encode_body(body), exc.status_code)


def _routes() -> list[Route | WebSocketRoute]:
    cid = "{conversation_id}"
    return [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/login", login, methods=["POST"]),
        Route("/v1/conversations", list_conversations, methods=["GET"]),
        Route("/v1/conversations", create_conversation, methods=["POST"]),
        Route(f"/v1/conversations/{cid}", rename_conversation, methods=["PATCH"]),
        Route(f"/v1/conversations/{cid}/members", add_member, methods=["POST"]),
        Route(f"/v1/conversations/{cid}/members/{{user}}", remove_member, methods=["DELETE"]),
        Route(f"/v1/conversations/{cid}/messages", history, methods=["GET"]),
        Route("/v1/ops", push_ops, methods=["POST"]),
        Route("/v1/events", pull_events, methods=["GET"]),
        Route("/v1/presence", presence, methods=["GET"]),
        Route("/v1/blocks", list_blocks, methods=["GET"]),
        Route("/v1/blocks/{user}", block, methods=["PUT"]),
        Route("/v1/blocks/{user}", unblock, methods=["DELETE"]),
        WebSocketRoute("/v1/live", live),
    ]


def create_app(config: ServerConfig) -> Starlette:
    """Build the reference server's ASGI application.

    The storage is opened here (so the app also works under ``httpx.ASGITransport``, which
    runs no lifespan); the lifespan starts the simulator, if configured, and closes
    everything on shutdown. ``app.state.core`` is the :class:`ServerService`.

    Args:
        config: the server configuration.
    """
    install_redaction()
    core = ServerService(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        core.start()
        try:
            yield
        finally:
            await core.stop()

    app = Starlette(
        routes=_routes(),
        middleware=[Middleware(FaultMiddleware, faults=config.faults)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    # "/v1/events/" is no other URL: answer the protocol's JSON 404, never a 307 redirect.
    app.router.redirect_slashes = False
    app.state.core = core
    return app
