"""The Matrix client-server API over httpx: one request, its JSON answer or a typed error.

Every httpx call runs inside :func:`~syncengine.transport.boundary.map_exceptions` (the same
boundary and rules as the v1 REST transport), so callers see only :mod:`syncengine.errors`. A
Matrix error answer (``{"errcode": "M_...", "error": "..."}``) becomes the error the status
table (:data:`syncengine.core.policy.STATUS_TABLE`) names for its status, with three Matrix
readings on top (see :func:`matrix_error`).
"""

from __future__ import annotations

import ssl
import time
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from syncengine import wire
from syncengine.core.policy import RetryAfterGate, error_for_status, retry_after_seconds
from syncengine.errors import AuthFailed, RateLimited, Rejected, SyncEngineError, WireError
from syncengine.transport.base import check_url
from syncengine.transport.boundary import encode_json, map_exceptions
from syncengine.transport.rest import ERROR_BODY_BYTES, _read_body, _rules

__all__ = ["CLIENT", "MatrixHttp", "matrix_error", "segment"]

#: The client-server API prefix.
CLIENT = "/_matrix/client/v3"

#: Matrix error codes read as v1's codes (the rest keep their ``M_`` code, lowercased).
_CODES = {
    "M_FORBIDDEN": "forbidden",
    "M_NOT_FOUND": "not_found",
    "M_UNKNOWN_TOKEN": "unauthorized",
    "M_MISSING_TOKEN": "unauthorized",
    "M_LIMIT_EXCEEDED": "rate_limited",
    "M_TOO_LARGE": "too_large",
    "M_ROOM_IN_USE": "room_in_use",
    "M_BAD_JSON": "invalid",
    "M_NOT_JSON": "invalid",
    "M_INVALID_PARAM": "invalid",
}


def segment(value: str) -> str:
    """One escaped path segment (room ids hold ``!``, aliases ``#`` and ``:``)."""
    return quote(value, safe="")


def matrix_error(
    status: int, body: bytes, *, retry_after: str | None = None, login: bool = False
) -> SyncEngineError:
    """The typed error for a Matrix error answer.

    The status table decides, except that:

    - a login refused with ``403 M_FORBIDDEN`` (Synapse's answer to a wrong password or an
      unknown user) is :class:`AuthFailed`, like v1's 401;
    - a room the user is not in is ``403 M_FORBIDDEN`` in Matrix and 404 ``not_found`` in v1:
      it becomes ``Rejected("not_found", status=403)`` (still one failed operation);
    - 429 ``M_LIMIT_EXCEEDED`` waits ``Retry-After`` or the body's ``retry_after_ms``.
    """
    try:
        parsed = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        parsed = {}
    fields: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    errcode = str(fields.get("errcode") or f"http_{status}")
    reason = f"{errcode}: {fields.get('error') or 'request failed'}"[:500]
    if login and status == 403 and errcode == "M_FORBIDDEN":
        return AuthFailed(f"bad_credentials: {reason}")
    code = _CODES.get(errcode, errcode.lower())
    if status == 403 and errcode == "M_FORBIDDEN" and _not_a_member(reason):
        code = "not_found"
    pause = retry_after_seconds(retry_after, fields.get("retry_after_ms"))
    return error_for_status(status, code, reason, retry_after=pause)


def _not_a_member(reason: str) -> bool:
    text = reason.lower()
    return "not in room" in text or "not a member" in text or "not joined" in text


class MatrixHttp:
    """A Matrix homeserver's client API (httpx), with the token in the header only.

    Args:
        base_url: the homeserver, ``https://host[:port]`` (plain http only for loopback, or
            with ``allow_insecure``).
        ssl_context: the TLS context (verification always on).
        allow_insecure: allow plain http to a host that is not loopback.
        timeout_s: per-request timeout (a long poll adds its own wait on top).
        http_transport: an httpx transport to send through instead of the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_insecure: bool = False,
        timeout_s: float = 10.0,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = check_url(base_url, allow_insecure=allow_insecure)
        self.timeout_s = timeout_s
        self.token: str | None = None
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

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        wait_s: float = 0.0,
        login: bool = False,
        array: bool = False,
    ) -> dict[str, Any]:
        """Send one request; the JSON object of its 2xx answer, or the typed error.

        Args:
            method: the HTTP method.
            path: the path, its variable segments already escaped (:func:`segment`).
            json: the body, encoded here.
            params: the query.
            wait_s: how long the server may hold the answer (a ``/sync`` long poll).
            login: read ``403 M_FORBIDDEN`` as refused credentials.
            array: the answer is a JSON array (``/rooms/{id}/state``): returned as
                ``{"items": [...]}``.
        """
        wait = self._gate.wait(time.monotonic())
        if wait > 0:
            raise RateLimited(
                "rate_limited: waiting out the server's Retry-After", retry_after=wait
            )
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        content = None
        if json is not None:
            content = encode_json(json)
            headers["Content-Type"] = "application/json"
        timeout = httpx.Timeout(self.timeout_s + wait_s, connect=min(self.timeout_s, 5.0))
        with map_exceptions(self.base_url, self._rules):
            req = self._client.build_request(
                method, path, content=content, params=params, headers=headers, timeout=timeout
            )
            resp = await self._client.send(req, stream=True)
            try:
                if resp.status_code < 300:
                    return _object(await _read_body(resp, wire.MAX_PAGE_BYTES), array)
                body = await _read_body(resp, ERROR_BODY_BYTES, cut=True)
            finally:
                await resp.aclose()
        error = matrix_error(
            resp.status_code, body, retry_after=resp.headers.get("retry-after"), login=login
        )
        if isinstance(error, RateLimited) and error.retry_after:
            self._gate.hold(time.monotonic(), error.retry_after)
        raise error

    async def aclose(self) -> None:
        """Close the connection pool."""
        with map_exceptions(self.base_url, self._rules):
            await self._client.aclose()


def _object(body: bytes, array: bool = False) -> dict[str, Any]:
    obj = wire.decode_json(body, limit=wire.MAX_PAGE_BYTES) if body else {}
    if array and isinstance(obj, list):
        return {"items": obj}
    if not isinstance(obj, dict):
        raise WireError("expected a JSON object", field="body")
    return obj


def is_code(exc: BaseException, *codes: str) -> bool:
    """True when ``exc`` is a :class:`Rejected` whose reason starts with one Matrix errcode."""
    return isinstance(exc, Rejected) and any(exc.reason.startswith(f"{c}:") for c in codes)
