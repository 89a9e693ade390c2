"""Fault injection for REST requests: delays, 5xx before handling, and lost acknowledgements.

The live channel's fault (dropped connections) is applied by each connection's sender, see
:class:`syncengine.server.live.LiveConnection`. Both read the same mutable
:class:`~syncengine.server.config.FaultConfig`, so a test can switch faults on and off while
the server runs (``srv.faults.error_rate = 0.2``).
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncengine.server.config import FaultConfig

__all__ = ["FaultMiddleware"]

_UNAVAILABLE = orjson.dumps({"code": "unavailable", "reason": "injected fault"})


async def _send_unavailable(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_UNAVAILABLE)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _UNAVAILABLE})


class FaultMiddleware:
    """ASGI middleware that injects the REST faults of a :class:`FaultConfig`.

    ``/v1/health`` is never faulted, so readiness checks stay truthful.

    Args:
        app: the wrapped application.
        faults: the (mutable) fault configuration.
    """

    def __init__(self, app: ASGIApp, faults: FaultConfig) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        faults = self.faults
        if scope["type"] != "http" or not faults.active or scope["path"] == "/v1/health":
            await self.app(scope, receive, send)
            return
        if faults.delay_ms:
            await asyncio.sleep(faults.delay_ms / 1000)
        if faults.roll("5xx", faults.error_rate):
            await _send_unavailable(send)
            return
        if not faults.roll("lost_ack", faults.lost_ack_rate):
            await self.app(scope, receive, send)
            return

        async def swallow(_message: Message) -> None:
            """The real response is lost on its way back."""

        await self.app(scope, receive, swallow)
        await _send_unavailable(send)
