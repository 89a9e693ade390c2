"""What the sync protocol asks its driver to send: requests as data, no I/O.

The driver (``client/session.py``) turns each into one transport call and feeds the answer
back with the matching ``receive_*`` method.
"""

from __future__ import annotations

import attrs

__all__ = [
    "CatchUp",
    "ConnectLive",
    "ConversationsSnapshot",
    "HistoryRequest",
    "PresenceSnapshot",
    "Request",
]


@attrs.frozen
class CatchUp:
    """Pull pages from the cursor until caught up (each page's query: ``pull_request()``)."""


@attrs.frozen
class HistoryRequest:
    """``GET /v1/conversations/{id}/messages?before=...&limit=...``."""

    conversation_id: str
    before: int | None
    limit: int


@attrs.frozen
class ConversationsSnapshot:
    """``GET /v1/conversations``: the conversations and the stream head (a resync)."""


@attrs.frozen
class PresenceSnapshot:
    """``GET /v1/presence``: every contact's presence now."""


@attrs.frozen
class ConnectLive:
    """Open the live channel again (it was unavailable: the session is polling)."""


Request = CatchUp | HistoryRequest | ConversationsSnapshot | PresenceSnapshot | ConnectLive
