"""Typed events: what the server sends, and what the engine tells the application.

Server events travel in one tagged JSON format (``"type"`` names the class, see
``docs/protocol.md``). Durable events carry ``pos`` (the global stream position, the cursor)
and ``seq`` (dense per conversation); ephemeral ones (typing, presence) carry neither and are
ordered by the server's ``ts_ms``.

Protocol v1 always sends ``pos`` and ``seq`` (the decoder refuses an event without them). A
transport of another protocol (Matrix, :mod:`syncengine.transport.matrix`) leaves them None and
names the event by ``event_id`` instead; its stream also carries :class:`Checkpoint` (the cursor
to commit with everything before it) and :class:`Gap` (a per-conversation hole the transport
could not fill). The new fields default to None and are left out of the v1 encoding, so v1
frames stay the same byte for byte.

Engine events are facts in the past tense that the engine emits to ``SyncEngine.events()`` and
``SyncEngine.on()`` callbacks; server events are forwarded to the application too, after they
were applied to the store.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from syncengine.models import ConnectionState, Message

__all__ = [
    "SERVER_EVENT_TYPES",
    "Checkpoint",
    "ConnectionStateChanged",
    "ConversationUpdated",
    "Discontinuity",
    "DurableEvent",
    "EngineEvent",
    "ErrorEvent",
    "Event",
    "Gap",
    "MessageDeleted",
    "MessageFailed",
    "MessageQueued",
    "MessageReceived",
    "MessageSent",
    "MessageUpdated",
    "ReactionChanged",
    "ReadReceipt",
    "ServerEvent",
    "SyncCompleted",
    "TypingStarted",
    "TypingStopped",
    "UnknownEvent",
    "UserPresenceChanged",
]


@attrs.frozen(kw_only=True)
class ServerEvent:
    """Base of every event that comes from the server."""

    type: ClassVar[str] = ""


@attrs.frozen(kw_only=True)
class DurableEvent(ServerEvent):
    """A logged event: it has a stream position and a per-conversation sequence number.

    ``pos`` and ``seq`` are None only from a transport whose server assigns neither (Matrix);
    such an event is named by ``event_id`` (None in protocol v1, and then not encoded).
    """

    pos: int | None
    conversation_id: str
    seq: int | None
    ts_ms: int
    event_id: str | None = None


@attrs.frozen(kw_only=True)
class MessageReceived(DurableEvent):
    """A message was stored by the server."""

    type: ClassVar[str] = "message_received"
    message_id: str
    op_id: str | None = None
    sender: str
    body: str
    #: The server id of the message this one replies to (left out of the frame when None,
    #: so a message that is not a reply keeps its v1 bytes).
    reply_to: str | None = None


@attrs.frozen(kw_only=True)
class MessageUpdated(DurableEvent):
    """A message's body was edited."""

    type: ClassVar[str] = "message_updated"
    message_id: str
    body: str
    editor: str


@attrs.frozen(kw_only=True)
class MessageDeleted(DurableEvent):
    """A message was deleted (its body is gone; the seq stays taken)."""

    type: ClassVar[str] = "message_deleted"
    message_id: str
    deleted_by: str


@attrs.frozen(kw_only=True)
class ConversationUpdated(DurableEvent):
    """A conversation was created, renamed, or its members changed. Carries the full state."""

    type: ClassVar[str] = "conversation_updated"
    title: str
    members: tuple[str, ...]
    actor: str


@attrs.frozen(kw_only=True)
class ReactionChanged(DurableEvent):
    """``user`` added (``present``) or removed the reaction ``emoji`` on a message."""

    type: ClassVar[str] = "reaction_changed"
    message_id: str
    user: str
    emoji: str
    present: bool


@attrs.frozen(kw_only=True)
class ReadReceipt(DurableEvent):
    """``user`` has read the conversation up to ``read_seq``.

    A Matrix receipt names an event instead: ``read_seq`` is None and ``read_event_id`` is
    that event's id (None in protocol v1, and then not encoded).
    """

    type: ClassVar[str] = "read_receipt"
    user: str
    read_seq: int | None
    read_event_id: str | None = None


@attrs.frozen(kw_only=True)
class TypingStarted(ServerEvent):
    """``user`` is typing in a conversation; the indicator expires after ``ttl_ms``."""

    type: ClassVar[str] = "typing_started"
    conversation_id: str
    user: str
    ttl_ms: int = 8000
    ts_ms: int


@attrs.frozen(kw_only=True)
class TypingStopped(ServerEvent):
    """``user`` stopped typing (or their typing expired on the server)."""

    type: ClassVar[str] = "typing_stopped"
    conversation_id: str
    user: str
    ts_ms: int


@attrs.frozen(kw_only=True)
class UserPresenceChanged(ServerEvent):
    """A user's presence changed; ``last_seen_ms`` is when the server last saw them."""

    type: ClassVar[str] = "presence_changed"
    user: str
    status: str
    last_seen_ms: int | None = None
    ts_ms: int


@attrs.frozen(kw_only=True)
class ErrorEvent(ServerEvent):
    """The server reports an error on the live channel (``code`` and ``reason``)."""

    type: ClassVar[str] = "error"
    code: str
    reason: str
    retry_after_ms: int | None = None


@attrs.frozen(kw_only=True)
class UnknownEvent(ServerEvent):
    """An event of a type this version does not know. Kept, counted, never a crash."""

    type: ClassVar[str] = "unknown"
    raw_type: str
    pos: int | None = None
    data: dict[str, object] = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class Checkpoint(ServerEvent):
    """Everything before this in the stream was delivered: ``cursor`` may be committed with it.

    Never on the v1 wire. A transport whose cursors are opaque and unordered (Matrix's
    ``/sync`` tokens) yields one after the events of each response of its live stream.
    """

    type: ClassVar[str] = "checkpoint"
    cursor: int | str


@attrs.frozen(kw_only=True)
class Gap(ServerEvent):
    """A hole in one conversation's history that the transport could not fill.

    Never on the v1 wire. The events between ``token`` (going back) and ``since`` were not
    delivered (more than the transport's gap-fill cap); what follows the ``Gap`` is the newest
    part. The engine marks that conversation's history incomplete (a per-conversation
    discontinuity) and may page back from ``token`` with ``history``.
    """

    type: ClassVar[str] = "gap"
    conversation_id: str
    token: str
    since: int | str | None = None


SERVER_EVENT_TYPES: dict[str, type[ServerEvent]] = {
    cls.type: cls
    for cls in (
        MessageReceived,
        MessageUpdated,
        MessageDeleted,
        ConversationUpdated,
        ReadReceipt,
        ReactionChanged,
        TypingStarted,
        TypingStopped,
        UserPresenceChanged,
        ErrorEvent,
    )
}


# --- events the engine emits to the application ------------------------------------------


@attrs.frozen(kw_only=True)
class EngineEvent:
    """Base of the events the engine itself emits."""


@attrs.frozen(kw_only=True)
class MessageQueued(EngineEvent):
    """A send was committed to the outbox; ``message`` is its local echo."""

    message: Message


@attrs.frozen(kw_only=True)
class MessageSent(EngineEvent):
    """The server has a send; the local echo now has its server id and seq.

    Emitted once per send, from whichever came first: the push's acknowledgement, or the
    server's copy of the message (the echo) on the live channel or in a pull.
    """

    op_id: str
    conversation_id: str
    message_id: str
    seq: int


@attrs.frozen(kw_only=True)
class MessageFailed(EngineEvent):
    """The server permanently refused an operation; it is parked as FAILED."""

    op_id: str
    conversation_id: str
    code: str
    reason: str


@attrs.frozen(kw_only=True)
class ConnectionStateChanged(EngineEvent):
    """The connection state moved from ``old`` to ``new``; ``reason`` says why."""

    old: ConnectionState
    new: ConnectionState
    reason: str = ""


@attrs.frozen(kw_only=True)
class Discontinuity(EngineEvent):
    """The cursor had expired on the server; the store was resynced from ``new_cursor``.

    With ``conversation_id`` (Matrix) only that conversation has a hole: the transport could
    not fill a gap in its history (the cursors are then opaque tokens).
    """

    old_cursor: int | str | None
    new_cursor: int | str | None
    conversation_id: str | None = None


@attrs.frozen(kw_only=True)
class SyncCompleted(EngineEvent):
    """A push and catch-up round finished: ``pushed`` operations, ``pulled`` events.

    ``cursor`` is an int in protocol v1 and an opaque token on a Matrix homeserver.
    """

    pushed: int
    pulled: int
    cursor: int | str


Event = ServerEvent | EngineEvent
