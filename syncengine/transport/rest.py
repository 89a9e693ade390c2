"""REST transport (httpx): the only module that touches httpx.

httpx exceptions and HTTP error statuses are mapped to :mod:`syncengine.errors` here, with
``raise ... from exc``. The token travels only in the ``Authorization`` header.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from syncengine import wire
from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    RateLimited,
    Rejected,
    ServerUnavailable,
    SyncEngineError,
    TLSVerificationFailed,
    WireError,
)
from syncengine.transport.base import LiveLink, check_url
from syncengine.wire import EventPage, HistoryPageWire, OpResult

__all__ = ["RestTransport", "error_from_response"]


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(resp: httpx.Response, body: dict[str, Any]) -> float | None:
    header = resp.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    ms = body.get("retry_after_ms")
    if isinstance(ms, int | float) and not isinstance(ms, bool):
        return max(0.0, ms / 1000)
    return None


def error_from_response(resp: httpx.Response) -> SyncEngineError:
    """The typed error for a non-2xx response."""
    try:
        body = orjson.loads(resp.content) if resp.content else {}
        if not isinstance(body, dict):
            body = {}
    except orjson.JSONDecodeError:
        body = {}
    code = str(body.get("code") or f"http_{resp.status_code}")
    reason = str(body.get("reason") or resp.reason_phrase or "request failed")[:500]
    status = resp.status_code
    if status == 401:
        return AuthFailed(f"{code}: {reason}")
    if status == 410:
        return CursorExpired(f"{code}: {reason}")
    if status == 429:
        return RateLimited(f"{code}: {reason}", retry_after=_retry_after(resp, body))
    if status >= 500 or status == 408:
        return ServerUnavailable(f"server error {status}: {reason}")
    return Rejected(code, reason, status=status)


class RestTransport:
    """Protocol v1 over HTTP(S), plus the live channel (see :mod:`syncengine.transport.live`).

    Args:
        base_url: ``https://host:port`` (plain http only for loopback, or with
            ``allow_insecure``).
        ssl_context: the TLS context shared with the live channel.
        timeout_s: per-request timeout.
        live_url: override of the WebSocket URL (default: derived from ``base_url``).
        heartbeat_interval_s, heartbeat_timeout_s: WebSocket ping cadence and deadline.
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
        # No request before this (monotonic): a 429's Retry-After holds for the whole client.
        self._blocked_until = 0.0
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            verify=ssl_context if ssl_context is not None else True,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            headers={"User-Agent": "syncengine/0.1"},
            follow_redirects=False,
        )

    def set_token(self, token: str | None) -> None:
        """Use ``token`` for every following request (None: anonymous)."""
        self._token = token

    async def _request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        wait = self._blocked_until - time.monotonic()
        if wait > 0:
            # The server asked this client to wait (429 + Retry-After): honour it for every
            # request, not only the refused one, and send nothing until then.
            raise RateLimited(
                "rate_limited: waiting out the server's Retry-After", retry_after=wait
            )
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        content = None
        if json is not None:
            content = orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        try:
            resp = await self._client.request(
                method, path, content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            if _is_tls_failure(exc):
                raise TLSVerificationFailed(
                    f"TLS verification failed for {self.base_url}: {exc}"
                ) from exc
            raise ServerUnavailable(f"cannot reach {self.base_url}: {type(exc).__name__}") from exc
        except OSError as exc:  # pragma: no cover - httpx wraps these, defensive
            raise ServerUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
        if resp.status_code >= 300:
            error = error_from_response(resp)
            if isinstance(error, RateLimited) and error.retry_after:
                self._blocked_until = time.monotonic() + error.retry_after
            raise error
        return resp

    async def health(self) -> dict[str, Any]:
        """``GET /v1/health`` (no auth)."""
        resp = await self._request("GET", "/v1/health")
        return _json_object(resp)

    async def login(self, user: str, password: str, device: str) -> str:
        """``POST /v1/login``; returns the token (not stored here)."""
        resp = await self._request(
            "POST", "/v1/login", json={"user": user, "password": password, "device": device}
        )
        body = _json_object(resp)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise WireError("login response without a token", field="token")
        return token

    async def push(self, ops: Sequence[dict[str, Any]]) -> list[OpResult]:
        resp = await self._request("POST", "/v1/ops", json={"ops": list(ops)})
        return wire.decode_op_results(resp.content)

    async def pull(self, since: int, limit: int) -> EventPage:
        resp = await self._request("GET", "/v1/events", params={"since": since, "limit": limit})
        return wire.decode_page(resp.content)

    async def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> HistoryPageWire:
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        resp = await self._request(
            "GET", f"/v1/conversations/{conversation_id}/messages", params=params
        )
        return wire.decode_history(resp.content)

    async def conversations(self) -> tuple[list[dict[str, Any]], int]:
        body = _json_object(await self._request("GET", "/v1/conversations"))
        convs = body.get("conversations")
        head = body.get("head")
        if not isinstance(convs, list) or type(head) is not int:
            raise WireError("expected conversations list and head", field="conversations")
        return [c for c in convs if isinstance(c, dict)], head

    async def presence(self) -> list[dict[str, Any]]:
        body = _json_object(await self._request("GET", "/v1/presence"))
        items = body.get("presence")
        if not isinstance(items, list):
            raise WireError("expected a presence list", field="presence")
        return [p for p in items if isinstance(p, dict)]

    async def create_conversation(
        self, conversation_id: str, title: str, members: Sequence[str]
    ) -> dict[str, Any]:
        resp = await self._request(
            "POST",
            "/v1/conversations",
            json={"id": conversation_id, "title": title, "members": list(members)},
        )
        return _json_object(resp)

    async def connect_live(self) -> LiveLink:
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
        await self._client.aclose()


def _json_object(resp: httpx.Response) -> dict[str, Any]:
    obj = wire.decode_json(resp.content, limit=wire.MAX_PAGE_BYTES)
    if not isinstance(obj, dict):
        raise WireError("expected a JSON object", field="body")
    return obj
