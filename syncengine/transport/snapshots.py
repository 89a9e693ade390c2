"""Typed snapshot bodies: ``GET /v1/conversations`` and ``GET /v1/presence``.

The other response bodies (event pages, push results, history) are typed in
:mod:`syncengine.wire`; these two were passed on as ``dict[str, Any]``. They are decoded here
once, from bytes, with the same strict converter; the dict-returning transport methods
(``conversations()``, ``presence()``) are derived from them so the engine's reading of them
stays as it was.
"""

from __future__ import annotations

from typing import Any

import attrs

from syncengine import wire
from syncengine.errors import WireError

__all__ = [
    "ConversationList",
    "ConversationSnapshot",
    "PresenceSnapshot",
    "decode_conversations",
    "decode_presence",
]


@attrs.frozen(kw_only=True)
class ConversationSnapshot:
    """One conversation as ``GET /v1/conversations`` shows it to the user."""

    id: str
    title: str = ""
    members: tuple[str, ...] = ()
    last_seq: int = 0
    created_by: str | None = None
    read_seq: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The wire shape (``members`` as a list), for code written against dicts."""
        return {
            "id": self.id,
            "title": self.title,
            "members": list(self.members),
            "last_seq": self.last_seq,
            "created_by": self.created_by,
            "read_seq": self.read_seq,
        }


@attrs.frozen(kw_only=True)
class ConversationList:
    """The user's conversations now, and the stream head when they were read.

    ``head`` is an int in protocol v1 and an opaque ``/sync`` token from Matrix.
    """

    conversations: tuple[ConversationSnapshot, ...]
    head: int | str


@attrs.frozen(kw_only=True)
class PresenceSnapshot:
    """One user's presence as ``GET /v1/presence`` reports it.

    ``status`` is kept as the server sent it: the store checks it against
    :class:`~syncengine.models.PresenceStatus` and ignores an unknown one, so a newer server's
    status does not fail the whole snapshot.
    """

    user: str
    status: str
    ts_ms: int = 0
    last_seen_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The wire shape, for code written against dicts."""
        return {
            "user": self.user,
            "status": self.status,
            "ts_ms": self.ts_ms,
            "last_seen_ms": self.last_seen_ms,
        }


def _object(data: bytes) -> dict[str, Any]:
    obj = wire.decode_json(data, limit=wire.MAX_PAGE_BYTES)
    if not isinstance(obj, dict):
        raise WireError("expected a JSON object", field="body")
    return obj


def decode_conversations(data: bytes) -> ConversationList:
    """Decode a ``GET /v1/conversations`` body.

    Entries that are not objects are passed over (as before typing); an object that breaks
    the schema (no string ``id``, members not strings, ...) is a :class:`WireError`, since
    storing half of it would leave a conversation without its members after a resync.

    Raises:
        WireError: the body or one conversation does not follow the protocol.
    """
    body = _object(data)
    convs = body.get("conversations")
    head = body.get("head")
    if not isinstance(convs, list) or type(head) is not int:
        raise WireError("expected conversations list and head", field="conversations")
    items = [c for c in convs if isinstance(c, dict)]
    typed = wire.structure(items, tuple[ConversationSnapshot, ...], where="conversations")
    return ConversationList(conversations=typed, head=head)


def decode_presence(data: bytes) -> tuple[PresenceSnapshot, ...]:
    """Decode a ``GET /v1/presence`` body.

    Presence is ephemeral and each entry stands alone: an entry without a string ``user`` or
    with a non-integer ``ts_ms`` is passed over, the others are kept.

    Raises:
        WireError: the body is not an object with a ``presence`` list.
    """
    items = _object(data).get("presence")
    if not isinstance(items, list):
        raise WireError("expected a presence list", field="presence")
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        user, ts_ms, last_seen = item.get("user"), item.get("ts_ms", 0), item.get("last_seen_ms")
        if not isinstance(user, str) or type(ts_ms) is not int:
            continue
        out.append(
            PresenceSnapshot(
                user=user,
                status=str(item.get("status")),
                ts_ms=ts_ms,
                last_seen_ms=last_seen if type(last_seen) is int else None,
            )
        )
    return tuple(out)
