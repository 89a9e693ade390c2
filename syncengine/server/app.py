"""The reference server's Starlette application: every endpoint of ``docs/protocol.md``.

:func:`create_app` builds the app around a :class:`ServerCore` (storage, live hub, rate
limiters, simulator). Every write commits first and fans its events out right after, on the
event loop thread, without yielding in between: so live delivery follows ``pos`` order.
Every rejection is a JSON ``{"code", "reason"}``; a bug answers ``500 internal`` without a
traceback on the wire (the traceback goes to the log, redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import math
import os
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

from syncengine import wire
from syncengine.errors import WireError
from syncengine.logs import install_redaction
from syncengine.server import state
from syncengine.server.config import ServerConfig
from syncengine.server.faults import FaultMiddleware
from syncengine.server.live import CLOSE_POLICY, Hub, LiveConnection
from syncengine.server.state import ApiError, RateLimiter
from syncengine.server.storage import Storage

__all__ = ["ServerCore", "create_app"]

log = logging.getLogger("syncengine.server")

_MAX_PASSWORD_CHARS = 1024
_LIMITER_SWEEP = 10_000  # forget idle rate-limit buckets past this many keys
_MAX_QUERY_INT = 1 << 62  # query integers are capped here (SQLite integers are 64-bit)


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    """The JSON response of a rejection (with ``Retry-After`` for ``429``)."""
    headers = None
    if error.status == 429:
        headers = {"Retry-After": str(math.ceil(error.extra.get("retry_after_ms", 1000) / 1000))}
    return json_response(error.body(), error.status, headers)


class ServerCore:
    """The server's state behind the routes: storage, live hub, limiters, simulator.

    Args:
        config: the server configuration.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.storage = Storage(config.db_path, retention=config.retention)
        self.hub = Hub(config, self.storage)
        self.rest_limiter = RateLimiter(config.rate_per_s, config.rate_burst)
        self.login_limiter = RateLimiter(config.login_rate_per_s, config.login_burst)
        self.on_login: list[Callable[[str], None]] = []

    def close(self) -> None:
        """Stop timers and close the storage."""
        self.hub.shutdown()
        self.storage.close()

    def _limit(self, limiter: RateLimiter, key: str) -> None:
        now = time.monotonic()
        if len(limiter.buckets) > _LIMITER_SWEEP:
            limiter.forget_idle(now)
        wait = limiter.take(key, now)
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                "too many requests; slow down",
                retry_after_ms=state.retry_after_ms(wait),
            )

    def authenticate(self, request: Request) -> tuple[str, str]:
        """The ``(user, device)`` of a request's bearer token, rate-limited per user.

        Raises:
            ApiError: 401 ``unauthorized``, or 429 ``rate_limited``.
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        identity = None
        if scheme.lower() == "bearer" and token.strip():
            identity = self.storage.authenticate(token.strip())
        if identity is None:
            raise ApiError(401, "unauthorized", "missing, invalid or expired token")
        user, device, _expires = identity
        self._limit(self.rest_limiter, user)
        return user, device

    async def set_password(self, user: str, password: str) -> None:
        """Create a user or replace their password (``serve --users``).

        Raises:
            ApiError: 422 ``invalid`` for a bad user name or password.
        """
        state.check_user(user)
        _check_password(password)
        salt = os.urandom(16)
        params = state.scrypt_params(self.config.scrypt_n)
        digest = await asyncio.to_thread(state.hash_password, password, salt, params)
        self.storage.set_password(user, salt, digest, params)

    async def login(self, user: str, password: str, device: str) -> dict[str, Any]:
        """Check (or, with open registration, create) a user and issue a token.

        Raises:
            ApiError: 401 ``bad_credentials``, or 429 ``rate_limited``.
        """
        self._limit(self.login_limiter, user)
        record = self.storage.password_record(user)
        if record is None and self.config.registration_open:
            salt = os.urandom(16)
            params = state.scrypt_params(self.config.scrypt_n)
            digest = await asyncio.to_thread(state.hash_password, password, salt, params)
            if self.storage.create_user(user, salt, digest, params):
                log.info("registered user %s", user)
            record = self.storage.password_record(user)
        if record is None or not await asyncio.to_thread(_verify, password, record):
            raise ApiError(401, "bad_credentials", "unknown user or wrong password")
        token = self.storage.issue_token(user, device, self.config.token_ttl_s)
        log.info("login user=%s device=%s", user, device)
        for hook in self.on_login:
            hook(user)
        return {
            "token": token,
            "user": user,
            "device": device,
            "expires_in_s": math.ceil(self.config.token_ttl_s),
        }


def _check_password(password: object) -> str:
    if not isinstance(password, str) or not 0 < len(password) <= _MAX_PASSWORD_CHARS:
        raise ApiError(422, "invalid", f"password must be 1-{_MAX_PASSWORD_CHARS} characters")
    return password


def _verify(password: str, record: tuple[bytes, bytes, str]) -> bool:
    salt, digest, params = record
    return hmac.compare_digest(state.hash_password(password, salt, params), digest)


Handler = Callable[[Request], Awaitable[Response]]


def _endpoint(func: Callable[[ServerCore, Request], Awaitable[Response]]) -> Handler:
    """Wrap a route: rejections become JSON bodies, bugs become ``500 internal``."""

    @functools.wraps(func)
    async def wrapper(request: Request) -> Response:
        try:
            return await func(request.app.state.core, request)
        except ApiError as exc:
            return error_response(exc)
        except ClientDisconnect:  # the client left mid-request: nobody reads the answer
            log.debug("client left during %s %s", request.method, request.url.path)
            return Response(status_code=499)
        except Exception:
            log.exception("internal error in %s %s", request.method, request.url.path)
            return json_response({"code": "internal", "reason": "internal server error"}, 500)

    return wrapper


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, within the size limit.

    Raises:
        ApiError: 413 ``too_large``, 400 ``invalid_json``, 422 ``invalid`` (not an object).
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
    try:
        obj = wire.decode_json(b"".join(chunks), limit=limit)
    except WireError as exc:
        raise ApiError(400, "invalid_json", exc.reason) from None
    if not isinstance(obj, dict):
        raise ApiError(422, "invalid", "the body must be a JSON object")
    return obj


def _int_param(request: Request, name: str, default: int | None, minimum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"{name} must be an integer") from None
    if value < minimum:
        raise ApiError(400, "bad_request", f"{name} must be at least {minimum}")
    # Past any position or seq there is, and still an SQLite integer.
    return min(value, _MAX_QUERY_INT)


def _conversation_id(request: Request) -> str:
    cid = request.path_params["conversation_id"]
    if not state.is_conversation_id(cid):
        raise ApiError(404, "not_found", "no such conversation")
    return str(cid)


# --- routes -------------------------------------------------------------------------------


@_endpoint
async def health(core: ServerCore, _request: Request) -> Response:
    """``GET /v1/health``: no auth."""
    return json_response({"ok": True, "head": core.storage.head})


@_endpoint
async def login(core: ServerCore, request: Request) -> Response:
    """``POST /v1/login``."""
    body = await _read_json(request, core.config.max_body_bytes)
    user = state.check_user(body.get("user"))
    device = state.check_device(body.get("device"))
    password = _check_password(body.get("password"))
    return json_response(await core.login(user, password, device))


@_endpoint
async def list_conversations(core: ServerCore, request: Request) -> Response:
    """``GET /v1/conversations``."""
    user, _device = core.authenticate(request)
    conversations, head = core.storage.conversations_of(user)
    return json_response({"conversations": conversations, "head": head})


@_endpoint
async def create_conversation(core: ServerCore, request: Request) -> Response:
    """``POST /v1/conversations``: 201 created, 200 when the same creation is replayed."""
    user, _device = core.authenticate(request)
    body = await _read_json(request, core.config.max_body_bytes)
    cid = state.check_conversation_id(body.get("id"))
    title = state.check_title(body.get("title", ""))
    members = state.check_members(body.get("members", []), user)
    conv, committed, created = core.storage.create_conversation(user, cid, title, members)
    core.hub.publish(committed)
    return json_response(conv, 201 if created else 200)


@_endpoint
async def rename_conversation(core: ServerCore, request: Request) -> Response:
    """``PATCH /v1/conversations/{id}``."""
    user, _device = core.authenticate(request)
    cid = _conversation_id(request)
    body = await _read_json(request, core.config.max_body_bytes)
    if "title" not in body:
        raise ApiError(422, "invalid", "title is required")
    conv, committed = core.storage.rename(user, cid, state.check_title(body["title"]))
    core.hub.publish(committed)
    return json_response(conv)


@_endpoint
async def add_member(core: ServerCore, request: Request) -> Response:
    """``POST /v1/conversations/{id}/members``."""
    user, _device = core.authenticate(request)
    cid = _conversation_id(request)
    body = await _read_json(request, core.config.max_body_bytes)
    member = state.check_user(body.get("user"))
    if not core.storage.is_member(cid, user):
        raise ApiError(404, "not_found", "no such conversation")
    if len(core.storage.members(cid)) >= state.MAX_MEMBERS and not core.storage.is_member(
        cid, member
    ):
        raise ApiError(413, "too_large", f"more than {state.MAX_MEMBERS} members")
    conv, committed = core.storage.set_member(user, cid, member, present=True)
    core.hub.publish(committed)
    return json_response(conv)


@_endpoint
async def remove_member(core: ServerCore, request: Request) -> Response:
    """``DELETE /v1/conversations/{id}/members/{user}``."""
    user, _device = core.authenticate(request)
    cid = _conversation_id(request)
    member = state.check_user(request.path_params["user"])
    conv, committed = core.storage.set_member(user, cid, member, present=False)
    core.hub.publish(committed)
    return json_response(conv)


@_endpoint
async def push_ops(core: ServerCore, request: Request) -> Response:
    """``POST /v1/ops``: a batch of operations, one result each."""
    user, device = core.authenticate(request)
    raw_ops = state.parse_batch(await _read_json(request, core.config.max_body_bytes))
    results, committed = core.storage.apply_ops(user, device, raw_ops)
    core.hub.publish(committed)
    return json_response({"results": results})


@_endpoint
async def pull_events(core: ServerCore, request: Request) -> Response:
    """``GET /v1/events?since=&limit=``."""
    user, _device = core.authenticate(request)
    since = _int_param(request, "since", 0, 0)
    limit = _int_param(request, "limit", state.PULL_LIMIT_DEFAULT, 1)
    assert since is not None and limit is not None
    events, nxt, more = core.storage.pull(user, since, min(limit, state.PULL_LIMIT_MAX))
    body = b'{"events":[%s],"next":%d,"has_more":%s}' % (
        ",".join(events).encode(),
        nxt,
        b"true" if more else b"false",
    )
    return Response(body, 200, media_type="application/json")


@_endpoint
async def history(core: ServerCore, request: Request) -> Response:
    """``GET /v1/conversations/{id}/messages?before=&limit=``."""
    user, _device = core.authenticate(request)
    cid = _conversation_id(request)
    before = _int_param(request, "before", None, 1)
    limit = _int_param(request, "limit", state.HISTORY_LIMIT_DEFAULT, 1)
    assert limit is not None
    messages, end = core.storage.history(user, cid, before, min(limit, state.HISTORY_LIMIT_MAX))
    return json_response({"messages": messages, "end_of_history": end})


@_endpoint
async def presence(core: ServerCore, request: Request) -> Response:
    """``GET /v1/presence``."""
    user, _device = core.authenticate(request)
    return json_response({"presence": core.hub.presence_of(core.storage.shared_users(user))})


# --- the live channel ---------------------------------------------------------------------


async def _authenticate_live(core: ServerCore, websocket: WebSocket) -> LiveConnection | None:
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
        frame = wire.decode_frame(_frame_data(message))
        token = frame.get("token")
        if frame.get("type") == "auth" and isinstance(token, str):
            identity = core.storage.authenticate(token)
    except WireError:
        pass
    if identity is None:
        await websocket.close(CLOSE_POLICY, "unauthorized")
        return None
    user, device, expires_ms = identity
    return core.hub.register(user, device, expires_ms)


def _frame_data(message: Mapping[str, Any]) -> str | bytes:
    """The payload of an ASGI ``websocket.receive`` message (text, else bytes)."""
    text = message.get("text")
    return text if text is not None else message.get("bytes") or b""


def _error_frame(code: str, reason: str, retry_after_ms: int | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "reason": reason}
    if retry_after_ms is not None:
        frame["retry_after_ms"] = retry_after_ms
    return orjson.dumps(frame).decode()


def _handle_frame(core: ServerCore, conn: LiveConnection, message: Mapping[str, Any]) -> None:
    """Act on one client frame after authentication."""
    wait = conn.bucket.take(time.monotonic())
    if wait > 0:
        conn.flood += 1
        if conn.flood >= core.config.ws_flood_limit:
            conn.close(CLOSE_POLICY, "rate_limited")
        else:
            conn.push(_error_frame("rate_limited", "too many frames", state.retry_after_ms(wait)))
        return
    conn.flood = 0
    try:
        frame = wire.decode_frame(_frame_data(message))
    except WireError as exc:
        conn.push(_error_frame("invalid", str(exc)))
        return
    kind = frame.get("type")
    if kind == "typing":
        cid = frame.get("conversation_id")
        typing = frame.get("typing")
        if not isinstance(cid, str) or not isinstance(typing, bool):
            conn.push(_error_frame("invalid", "typing needs conversation_id and typing"))
        elif not core.storage.is_member(cid, conn.user):
            conn.close(CLOSE_POLICY, "not_a_member")
        else:
            core.hub.set_typing(cid, conn.user, typing, conn)
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
    core: ServerCore = websocket.app.state.core
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
    return json_response({"code": code, "reason": str(exc.detail)}, exc.status_code)


def create_app(config: ServerConfig) -> Starlette:
    """Build the reference server's ASGI application.

    The storage is opened here (so the app also works under ``httpx.ASGITransport``, which
    runs no lifespan); the lifespan starts the simulator, if configured, and closes
    everything on shutdown. ``app.state.core`` is the :class:`ServerCore`.

    Args:
        config: the server configuration.
    """
    install_redaction()
    core = ServerCore(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        simulator = None
        if config.simulate:
            from syncengine.server.simulate import Simulator

            simulator = Simulator(
                core, config.simulate, config.simulate_rate, seed=config.simulate_seed
            )
            simulator.start()
        try:
            yield
        finally:
            if simulator is not None:
                await simulator.stop()
            core.close()

    cid = "{conversation_id}"
    app = Starlette(
        routes=[
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
            WebSocketRoute("/v1/live", live),
        ],
        middleware=[Middleware(FaultMiddleware, faults=config.faults)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.core = core
    return app
