"""REST transport (httpx): the only module that touches httpx.

Every httpx call runs inside :func:`~syncengine.transport.boundary.map_exceptions`, so callers
see only :mod:`syncengine.errors`; an HTTP error status becomes the error that
:data:`syncengine.core.policy.STATUS_TABLE` names for it. Bytes cross this edge: request
bodies are encoded here, response bodies are read here (never beyond
:data:`~syncengine.wire.MAX_PAGE_BYTES`) and decoded into typed values. The token travels only
in the ``Authorization`` header.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from syncengine import wire
from syncengine.core.policy import RetryAfterGate, error_for_status, retry_after_seconds
from syncengine.errors import (
    AuthFailed,
    RateLimited,
    Rejected,
    ServerUnavailable,
    SyncEngineError,
    UsageError,
    WireError,
)
from syncengine.transport.base import LiveLink, check_url
from syncengine.transport.boundary import Rule, encode_json, map_exceptions, network_cause
from syncengine.transport.snapshots import (
    ConversationList,
    PresenceSnapshot,
    decode_conversations,
    decode_presence,
)
from syncengine.wire import EventPage, HistoryPageWire, OpResult

__all__ = ["BodyTooLarge", "RestTransport", "error_from_body", "error_from_response"]

log = logging.getLogger("syncengine.transport")


class BodyTooLarge(WireError):
    """A response body over the limit the transport reads (a :class:`WireError`).

    :meth:`RestTransport.pull` and :meth:`RestTransport.history` recover from it by
    themselves (smaller pages); other requests raise it.
    """


def error_from_body(
    status: int, body: bytes, *, retry_after: str | None = None, reason_phrase: str = ""
) -> SyncEngineError:
    """The typed error for a non-2xx answer, from its status, body and ``Retry-After``.

    The error type comes from :data:`syncengine.core.policy.STATUS_TABLE`; the body only
    supplies the server's ``code``, ``reason`` and ``retry_after_ms``.
    """
    try:
        parsed = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        parsed = {}
    fields: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    code = str(fields.get("code") or f"http_{status}")
    reason = str(fields.get("reason") or reason_phrase or "request failed")[:500]
    pause = retry_after_seconds(retry_after, fields.get("retry_after_ms"))
    return error_for_status(status, code, reason, retry_after=pause)


def error_from_response(resp: httpx.Response) -> SyncEngineError:
    """The typed error for a non-2xx response (read in full)."""
    return error_from_body(
        resp.status_code,
        resp.content,
        retry_after=resp.headers.get("retry-after"),
        reason_phrase=resp.reason_phrase,
    )


def _unreachable(base_url: str) -> Rule:
    def build(exc: BaseException) -> Exception:
        return ServerUnavailable(f"cannot reach {base_url}: {network_cause(exc)}")

    return ((httpx.HTTPError,), build)


def _rules(base_url: str) -> tuple[Rule, ...]:
    # InvalidURL is no HTTPError, and UnsupportedProtocol is a "transport" error to httpx;
    # both mean the URL itself is unusable, which no retry fixes.
    def bad_url(exc: BaseException) -> Exception:
        return UsageError(f"invalid server URL {base_url}: {exc}")

    return (((httpx.InvalidURL, httpx.UnsupportedProtocol), bad_url), _unreachable(base_url))


#: How much of an error answer is read: its code and reason fit; a proxy's HTML page is cut.
ERROR_BODY_BYTES = 64 << 10


async def _read_body(resp: httpx.Response, limit: int, *, cut: bool = False) -> bytes:
    """The response body, never holding more than ``limit`` bytes.

    Args:
        resp: a streamed response.
        limit: the most bytes kept.
        cut: keep the first ``limit`` bytes of a longer body instead of refusing it (for
            error answers, whose status matters more than their body).

    Raises:
        WireError: the body is longer than ``limit`` (unless ``cut``).
    """
    declared = resp.headers.get("content-length")
    if not cut and declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"too large: {declared} bytes > limit {limit}", field="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if not cut:
                raise BodyTooLarge(f"too large: over {limit} bytes", field="body")
            chunks.append(chunk[: len(chunk) - (size - limit)])
            break
        chunks.append(chunk)
    return b"".join(chunks)


class RestTransport:
    """Protocol v1 over HTTP(S), plus the live channel (see :mod:`syncengine.transport.live`).

    Args:
        base_url: ``https://host:port`` (plain http only for loopback, or with
            ``allow_insecure``).
        ssl_context: the TLS context shared with the live channel.
        allow_insecure: allow plain http to a host that is not loopback.
        timeout_s: per-request timeout.
        live_url: override of the WebSocket URL (default: derived from ``base_url``).
        heartbeat_interval_s: WebSocket ping cadence.
        heartbeat_timeout_s: WebSocket ping deadline.
        http_transport: an httpx transport to send through instead of the network (tests use
            ``httpx.MockTransport``).

    Raises:
        UsageError: an unusable URL (see :func:`~syncengine.transport.base.check_url`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_insecure: bool = False,
        timeout_s: float = 10.0,
        live_url: str | None = None,
        heartbeat_interval_s: float = 2.0,
        heartbeat_timeout_s: float = 3.0,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = check_url(base_url, allow_insecure=allow_insecure)
        self.ssl_context = ssl_context
        self.live_url = live_url or (
            self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
            + "/v1/live"
        )
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._token: str | None = None
        # Page sizes known to fit the body limit, after a page came back too large (None:
        # as the caller asks). Kept until the end is reached, so a catch-up does not ask for
        # (and refuse) the same oversized page again and again.
        self.pull_limit_cap: int | None = None
        self.history_limit_cap: int | None = None
        # A 429's Retry-After holds for the whole client, not only the refused request.
        self._gate = RetryAfterGate()
        self._rules = _rules(self.base_url)
        with map_exceptions(self.base_url, self._rules):
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                verify=ssl_context if ssl_context is not None else True,
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
                headers={"User-Agent": "syncengine/0.1"},
                follow_redirects=False,
                transport=http_transport,
            )

    def set_token(self, token: str | None) -> None:
        """Use ``token`` for every following request (None: anonymous)."""
        self._token = token

    async def _request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> bytes:
        """Send one request; the body of its 2xx answer, or the typed error for its status."""
        wait = self._gate.wait(time.monotonic())
        if wait > 0:
            # The server asked this client to wait (429 + Retry-After): send nothing until then.
            raise RateLimited(
                "rate_limited: waiting out the server's Retry-After", retry_after=wait
            )
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        content = None
        if json is not None:
            content = encode_json(json)
            headers["Content-Type"] = "application/json"
        with map_exceptions(self.base_url, self._rules):
            request = self._client.build_request(
                method, path, content=content, params=params, headers=headers
            )
            resp = await self._client.send(request, stream=True)
            try:
                if resp.status_code < 300:
                    return await _read_body(resp, wire.MAX_PAGE_BYTES)
                body = await _read_body(resp, ERROR_BODY_BYTES, cut=True)
            finally:
                await resp.aclose()
        error = error_from_body(
            resp.status_code,
            body,
            retry_after=resp.headers.get("retry-after"),
            reason_phrase=resp.reason_phrase,
        )
        if isinstance(error, RateLimited) and error.retry_after:
            self._gate.hold(time.monotonic(), error.retry_after)
        raise error

    async def health(self) -> dict[str, Any]:
        """``GET /v1/health`` (no auth)."""
        return _json_object(await self._request("GET", "/v1/health"))

    async def login(self, user: str, password: str, device: str) -> str:
        """``POST /v1/login``; returns the token (not stored here)."""
        try:
            answer = await self._request(
                "POST", "/v1/login", json={"user": user, "password": password, "device": device}
            )
        except Rejected as exc:
            if exc.status != 404:
                raise
            # A 404 on the login endpoint: the URL does not point at a syncengine server's
            # root (most often it ends in /v1, which every request path already carries).
            base = self.base_url.rstrip("/")
            hint = (
                f"; drop the trailing /v1: {base.removesuffix('/v1')}"
                if base.endswith("/v1")
                else "; give the server's root URL"
            )
            raise Rejected(
                exc.code,
                f"no syncengine login at {base}/v1/login (404){hint}",
                status=exc.status,
            ) from exc
        body = _json_object(answer)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise WireError("login response without a token", field="token")
        return token

    async def push(self, ops: Sequence[dict[str, Any]]) -> list[OpResult]:
        """``POST /v1/ops``: one verdict per operation."""
        return wire.decode_op_results(
            await self._request("POST", "/v1/ops", json={"ops": list(ops)})
        )

    async def pull(self, since: int, limit: int) -> EventPage:
        """``GET /v1/events?since=&limit=``: one page of events.

        A page whose body is over :data:`~syncengine.wire.MAX_PAGE_BYTES` is asked for
        again with half the ``limit``, down to 1 (at most about ten tries); the smaller page
        comes back with ``has_more``, so the caller simply continues from its ``next``.
        Later pulls ask for that smaller size (:attr:`pull_limit_cap`) until one reaches
        the end. Only a single event over the limit, which no legal server sends, raises.

        Raises:
            BodyTooLarge: one event alone is over the limit.
        """
        size = min(limit, self.pull_limit_cap or limit)
        while True:
            try:
                body = await self._request(
                    "GET", "/v1/events", params={"since": since, "limit": size}
                )
                break
            except BodyTooLarge as exc:
                size = self._shrink("pull", since, size, exc)
                self.pull_limit_cap = size
        page = wire.decode_page(body)
        if not page.has_more:
            self.pull_limit_cap = None
        return page

    async def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> HistoryPageWire:
        """``GET /v1/conversations/{id}/messages``: one page of history, oldest first.

        Like :meth:`pull`, a page over the body limit is asked for again with half the
        ``limit`` (:attr:`history_limit_cap` keeps the size that fits); the smaller page
        holds the newest messages before ``before`` and is not the end of history.

        Raises:
            BodyTooLarge: one message alone is over the limit.
        """
        path = f"/v1/conversations/{_segment(conversation_id)}/messages"
        size = min(limit, self.history_limit_cap or limit)
        while True:
            params: dict[str, Any] = {"limit": size}
            if before is not None:
                params["before"] = before
            try:
                body = await self._request("GET", path, params=params)
                break
            except BodyTooLarge as exc:
                size = self._shrink("history", before, size, exc)
                self.history_limit_cap = size
        page = wire.decode_history(body)
        if page.end_of_history:
            self.history_limit_cap = None
        return page

    @staticmethod
    def _shrink(what: str, at: int | None, size: int, exc: BodyTooLarge) -> int:
        """The next, halved page size after a body over the limit (re-raises at 1)."""
        if size <= 1:
            raise exc
        smaller = size // 2
        log.warning(
            "%s page of %d from %s over the body limit (%s): asking for %d",
            what,
            size,
            at,
            exc.reason,
            smaller,
        )
        return smaller

    async def conversation_list(self) -> ConversationList:
        """``GET /v1/conversations``, typed: the user's conversations and the head."""
        return decode_conversations(await self._request("GET", "/v1/conversations"))

    async def presence_list(self) -> tuple[PresenceSnapshot, ...]:
        """``GET /v1/presence``, typed: every user who shares a conversation with this one."""
        return decode_presence(await self._request("GET", "/v1/presence"))

    async def conversations(self) -> tuple[list[dict[str, Any]], int]:
        """:meth:`conversation_list` in the dict shape the engine reads."""
        snapshot = await self.conversation_list()
        return [c.as_dict() for c in snapshot.conversations], snapshot.head

    async def presence(self) -> list[dict[str, Any]]:
        """:meth:`presence_list` in the dict shape the engine reads."""
        return [p.as_dict() for p in await self.presence_list()]

    async def create_conversation(
        self, conversation_id: str, title: str, members: Sequence[str]
    ) -> dict[str, Any]:
        """``POST /v1/conversations``: the conversation as the server stored it."""
        return _json_object(
            await self._request(
                "POST",
                "/v1/conversations",
                json={"id": conversation_id, "title": title, "members": list(members)},
            )
        )

    async def connect_live(self) -> LiveLink:
        """Open the live channel with this transport's token and TLS context."""
        from syncengine.transport.live import WebSocketLink

        if self._token is None:
            raise AuthFailed("not logged in")
        return await WebSocketLink.connect(
            self.live_url,
            token=self._token,
            ssl_context=self.ssl_context if self.live_url.startswith("wss://") else None,
            ping_interval=self.heartbeat_interval_s,
            ping_timeout=self.heartbeat_timeout_s,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        with map_exceptions(self.base_url, self._rules):
            await self._client.aclose()


def _segment(value: str) -> str:
    # An id is one path segment: a "/", "?" or "#" in it must not reach another endpoint.
    return quote(value, safe="")


def _json_object(body: bytes) -> dict[str, Any]:
    obj = wire.decode_json(body, limit=wire.MAX_PAGE_BYTES)
    if not isinstance(obj, dict):
        raise WireError("expected a JSON object", field="body")
    return obj
