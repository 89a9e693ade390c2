"""Transports: the only code that touches httpx (rest.py) and websockets (live.py)."""

from __future__ import annotations

import typing as _typing

from syncengine.transport.base import LiveLink, LiveUnavailable, Transport, make_ssl_context

if _typing.TYPE_CHECKING:
    from syncengine.transport.rest import RestTransport

__all__ = ["LiveLink", "LiveUnavailable", "RestTransport", "Transport", "make_ssl_context"]


def __getattr__(name: str) -> _typing.Any:
    # httpx is imported only when a transport is built (the CLI's read commands need none).
    if name == "RestTransport":
        from syncengine.transport.rest import RestTransport

        return RestTransport
    raise AttributeError(f"module 'syncengine.transport' has no attribute {name!r}")
