"""Live channel (websockets): the only module that touches websockets.

The token goes in the first frame, never in the URL. Compression is off (permessage-deflate
costs about a third of the throughput for small JSON frames, see docs/performance.md).
Heartbeats are websockets' pings: ``ping_interval`` 2 s and ``ping_timeout`` 3 s detect a
half-open link within about 5 s (plus :data:`CLOSE_TIMEOUT_S`); the ping state belongs to each
connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from syncengine import wire
from syncengine.core.policy import error_for_close, error_for_handshake
from syncengine.errors import ServerUnavailable, SyncEngineError, UsageError, WireError
from syncengine.events import ServerEvent
from syncengine.transport.base import LiveUnavailable
from syncengine.transport.boundary import Rule, encode_json, map_exceptions, raise_mapped

__all__ = ["WebSocketLink"]

log = logging.getLogger("syncengine.live")

#: How long a closing link waits for the server's close frame before it drops the socket.
#: A missed heartbeat closes the link this way too, and a half-open link never answers: the
#: wait adds to the detection time (2 s pings + 3 s deadline + this), while a server that is
#: there answers within a round trip. The server treats a dropped socket as any disconnect.
CLOSE_TIMEOUT_S = 0.5


def _closed_error(exc: ConnectionClosed) -> Exception:
    rcvd = exc.rcvd
    if rcvd is None:
        return error_for_close(None, "")
    return error_for_close(rcvd.code, rcvd.reason)


def _refused(exc: BaseException) -> Exception:
    # The handshake got an HTTP answer other than 101: the status table says whether that
    # is the server (retry), the token (log in) or the live path itself (poll over REST).
    status = cast(InvalidStatus, exc).response.status_code
    error = error_for_handshake(status)
    return error if error is not None else LiveUnavailable(f"live channel refused: HTTP {status}")


def _rules(url: str) -> tuple[Rule, ...]:
    def closed(exc: BaseException) -> Exception:
        return _closed_error(cast(ConnectionClosed, exc))

    def bad_uri(exc: BaseException) -> Exception:
        return UsageError(f"invalid live URL: {url}")

    def failed(exc: BaseException) -> Exception:
        return LiveUnavailable(f"live channel handshake failed: {exc}")

    def unreachable(exc: BaseException) -> Exception:
        return ServerUnavailable(f"cannot reach {url}: {type(exc).__name__}")

    return (
        ((InvalidStatus,), _refused),
        ((InvalidURI,), bad_uri),
        ((ConnectionClosed,), closed),
        ((InvalidHandshake,), failed),
        ((TimeoutError,), unreachable),
    )


async def _authenticate(ws: ClientConnection, token: str, timeout: float) -> int:
    """Send the token in the first frame and wait for ``ready``; returns its ``head``."""
    await ws.send(encode_json({"type": "auth", "token": token}).decode())
    try:
        async with asyncio.timeout(timeout):
            raw = await ws.recv()
    except TimeoutError as exc:
        raise ServerUnavailable("live channel: no ready frame in time") from exc
    frame = wire.decode_frame(raw)
    head = frame.get("head")
    if frame.get("type") != "ready" or type(head) is not int:
        raise WireError("expected a ready frame with head", field="ready")
    return head


class WebSocketLink:
    """One authenticated live connection. Use :meth:`connect`."""

    def __init__(self, ws: ClientConnection, head: int, *, url: str = "") -> None:
        self._ws = ws
        self.head = head
        self._url = url
        self._rules = _rules(url)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str,
        ssl_context: ssl.SSLContext | None,
        ping_interval: float = 2.0,
        ping_timeout: float = 3.0,
        open_timeout: float = 10.0,
    ) -> WebSocketLink:
        """Open, authenticate and wait for ``ready``.

        ``open_timeout`` bounds the upgrade, then again the wait for the ``ready`` frame (a
        middlebox may accept the upgrade and then pass nothing); the engine derives it from
        its request timeout (:func:`~syncengine.core.schedule.live_handshake_s`).

        Raises:
            LiveUnavailable: the WebSocket handshake was refused (poll over REST instead).
            AuthFailed: the token was refused.
            TLSVerificationFailed: the certificate did not verify.
            ServerUnavailable: the server could not be reached, or failed (5xx).
            UsageError: the URL is unusable.
            WireError: the server's first frame was not ``ready``.
        """
        kwargs: dict[str, Any] = {}
        if ssl_context is not None:
            kwargs["ssl"] = ssl_context
        rules = _rules(url)
        with map_exceptions(url, rules):
            ws = await connect(
                url,
                compression=None,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                open_timeout=open_timeout,
                close_timeout=CLOSE_TIMEOUT_S,
                max_size=wire.MAX_FRAME_BYTES,
                max_queue=4096,
                **kwargs,
            )
        link = cls(ws, 0, url=url)
        try:
            with map_exceptions(url, rules):
                link.head = await _authenticate(ws, token, open_timeout)
        except (SyncEngineError, LiveUnavailable):
            await link.close()
            raise
        return link

    async def recv(self) -> ServerEvent | None:
        """The next event; None for frames that are not events (``ready``, ``pong``...).

        Raises:
            ServerUnavailable / AuthFailed: the connection closed.
            WireError: a malformed frame (the connection stays usable).
        """
        try:
            raw = await self._ws.recv()
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc
        except Exception as exc:
            raise_mapped(exc, self._url, self._rules)
        obj = wire.decode_frame(raw)
        kind = obj.get("type")
        if kind == "ready":
            return None
        return wire.decode_event(obj)

    async def _send(self, obj: dict[str, Any]) -> None:
        data = encode_json(obj).decode()
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc
        except Exception as exc:
            raise_mapped(exc, self._url, self._rules)

    async def send_typing(self, conversation_id: str, typing: bool) -> None:
        """Tell the server this user started or stopped typing in a conversation."""
        await self._send({"type": "typing", "conversation_id": conversation_id, "typing": typing})

    async def send_presence(self, status: str) -> None:
        """Tell the server this user's presence (``online`` or ``away``)."""
        await self._send({"type": "presence", "status": status})

    async def close(self) -> None:
        """Close the connection; never raises (the link may already be dead)."""
        try:
            await self._ws.close()
        except Exception:  # pragma: no cover - closing a dead socket
            log.debug("error while closing the live channel", exc_info=True)
