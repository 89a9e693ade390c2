"""Live channel (websockets): the only module that touches websockets.

The token goes in the first frame, never in the URL. Compression is off (permessage-deflate
costs about a third of the throughput for small JSON frames, see docs/performance.md).
Heartbeats are websockets' pings: ``ping_interval`` 2 s and ``ping_timeout`` 3 s detect a
half-open link within about 5 s; the ping state belongs to each connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from syncengine import wire
from syncengine.errors import (
    AuthFailed,
    ServerUnavailable,
    TLSVerificationFailed,
    UsageError,
    WireError,
)
from syncengine.events import ServerEvent
from syncengine.transport.base import LiveUnavailable

__all__ = ["WebSocketLink"]

log = logging.getLogger("syncengine.live")


def _closed_error(exc: ConnectionClosed) -> Exception:
    rcvd = exc.rcvd
    if rcvd is not None and rcvd.code == 1008 and rcvd.reason == "unauthorized":
        return AuthFailed("the server refused the token on the live channel")
    code = rcvd.code if rcvd is not None else None
    reason = rcvd.reason if rcvd is not None else ""
    return ServerUnavailable(f"live channel closed (code {code} {reason})".strip())


class WebSocketLink:
    """One authenticated live connection. Use :meth:`connect`."""

    def __init__(self, ws: ClientConnection, head: int) -> None:
        self._ws = ws
        self.head = head

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

        Raises:
            LiveUnavailable: the WebSocket handshake was refused (poll over REST instead).
            AuthFailed: the token was refused.
            TLSVerificationFailed: the certificate did not verify.
            ServerUnavailable: the server could not be reached.
        """
        kwargs: dict[str, Any] = {}
        if ssl_context is not None:
            kwargs["ssl"] = ssl_context
        try:
            ws = await connect(
                url,
                compression=None,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                open_timeout=open_timeout,
                close_timeout=2.0,
                max_size=wire.MAX_FRAME_BYTES,
                max_queue=4096,
                **kwargs,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise AuthFailed("the server refused the token on the live channel") from exc
            if status >= 500:
                raise ServerUnavailable(f"live channel handshake: HTTP {status}") from exc
            raise LiveUnavailable(f"live channel refused: HTTP {status}") from exc
        except InvalidURI as exc:
            raise UsageError(f"invalid live URL: {url}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise TLSVerificationFailed(f"TLS verification failed for {url}: {exc}") from exc
        except InvalidHandshake as exc:
            raise LiveUnavailable(f"live channel handshake failed: {exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise ServerUnavailable(f"cannot reach {url}: {type(exc).__name__}") from exc
        try:
            await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
            async with asyncio.timeout(open_timeout):
                raw = await ws.recv()
            frame = wire.decode_frame(raw)
            if frame.get("type") != "ready" or type(frame.get("head")) is not int:
                raise WireError("expected a ready frame with head", field="ready")
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc
        except TimeoutError as exc:
            await ws.close()
            raise ServerUnavailable("live channel: no ready frame in time") from exc
        except WireError:
            await ws.close()
            raise
        return cls(ws, frame["head"])

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
        obj = wire.decode_frame(raw)
        kind = obj.get("type")
        if kind == "ready":
            return None
        return wire.decode_event(obj)

    async def _send(self, obj: dict[str, Any]) -> None:
        try:
            await self._ws.send(orjson.dumps(obj).decode())
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc

    async def send_typing(self, conversation_id: str, typing: bool) -> None:
        await self._send({"type": "typing", "conversation_id": conversation_id, "typing": typing})

    async def send_presence(self, status: str) -> None:
        await self._send({"type": "presence", "status": status})

    async def close(self) -> None:
        try:
            await self._ws.close()
        except Exception:  # pragma: no cover - closing a dead socket
            log.debug("error while closing the live channel", exc_info=True)
