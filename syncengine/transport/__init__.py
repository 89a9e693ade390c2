"""Transports: the only code that touches httpx (rest.py) and websockets (live.py).

Foreign exceptions stop at :mod:`syncengine.transport.boundary`; HTTP statuses are read
through :data:`syncengine.core.policy.STATUS_TABLE`.
"""

from __future__ import annotations

import typing as _typing

from syncengine.transport.base import LiveLink, LiveUnavailable, Transport, make_ssl_context
from syncengine.transport.snapshots import ConversationList, ConversationSnapshot, PresenceSnapshot

if _typing.TYPE_CHECKING:
    from syncengine.transport.rest import RestTransport

__all__ = [
    "ConversationList",
    "ConversationSnapshot",
    "LiveLink",
    "LiveUnavailable",
    "PresenceSnapshot",
    "RestTransport",
    "Transport",
    "make_ssl_context",
]


def __getattr__(name: str) -> _typing.Any:
    # httpx is imported only when a transport is built (the CLI's read commands need none).
    if name == "RestTransport":
        from syncengine.transport.rest import RestTransport

        return RestTransport
    raise AttributeError(f"module 'syncengine.transport' has no attribute {name!r}")
