"""Domain types: frozen, keyword-only attrs classes. Times are float seconds since the epoch.

These are what the store returns and the public API hands to applications. They carry no
behaviour that touches I/O.
"""

from __future__ import annotations

import enum
import os
import time
import uuid

import attrs

__all__ = [
    "ConnectionState",
    "Conversation",
    "HistoryPage",
    "Message",
    "MessageState",
    "OpKind",
    "OutboxItem",
    "OutboxState",
    "Presence",
    "PresenceStatus",
    "SyncHealth",
    "Typing",
    "new_id",
]


def new_id(now: float | None = None) -> str:
    """A time-ordered UUID (version 7 layout) as a string.

    Client-generated ids (operations, conversations) are time-ordered so that SQLite appends
    to its indexes instead of rewriting a random page per row (see docs/performance.md).
    """
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


class MessageState(enum.StrEnum):
    """Where a message stands from this device's point of view."""

    PENDING = "pending"  # queued locally, not yet acknowledged by the server
    SENT = "sent"  # the server copy is stored (it has a server id and a seq)
    FAILED = "failed"  # the server permanently refused it; see the outbox item's last_error


class OpKind(enum.StrEnum):
    """The operations the outbox carries to the server."""

    SEND = "send"
    EDIT = "edit"
    DELETE = "delete"
    MARK_READ = "mark_read"
    CREATE_CONVERSATION = "create_conversation"
    REACT = "react"
    ADD_MEMBER = "add_member"
    REMOVE_MEMBER = "remove_member"


class OutboxState(enum.StrEnum):
    """Lifecycle of an outbox item (transitions in ``syncengine.core.sync.OUTBOX_TRANSITIONS``)."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class ConnectionState(enum.StrEnum):
    """The engine's connection state (transitions: ``syncengine.core.sync``)."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    SYNCING = "syncing"
    LIVE = "live"
    BACKOFF = "backoff"
    FAILED = "failed"


class PresenceStatus(enum.StrEnum):
    """A user's presence as the server reports it (``offline`` is set only by the server)."""

    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


@attrs.frozen(kw_only=True)
class Conversation:
    """A conversation as the local store knows it.

    Attributes:
        id: client-chosen UUID (conversations can be created offline).
        title: display title.
        members: user names, sorted.
        last_seq: the highest per-conversation sequence number stored.
        read_seq: the highest seq this user has marked read.
        unread: messages from others after ``read_seq``, not deleted.
        pending: True while its creation is still in the outbox.
    """

    id: str
    title: str
    members: tuple[str, ...] = ()
    last_seq: int = 0
    read_seq: int = 0
    unread: int = 0
    pending: bool = False


@attrs.frozen(kw_only=True)
class Message:
    """A message in the local store: a server copy, or a local echo of a queued send.

    Attributes:
        conversation_id: the conversation it belongs to.
        op_id: the id of the send operation that created it (known for our own messages and
            carried by the server for everyone's).
        id: the server's message id; ``None`` while the message is a local echo.
        seq: the per-conversation position assigned by the server; ``None`` while pending.
        sender: user name of the author.
        body: current text (after edits; empty when deleted).
        state: PENDING, SENT or FAILED.
        created_at: server time when stored by the server, local time while pending.
        edited_at: server time of the last edit applied, if any.
        deleted: True once a delete has been applied.
        reply_to: the id of the message this one replies to (a server id; while both are
            local echoes, the op id of the replied-to send), or None.
        reactions: per emoji, the users who reacted with it, sorted.
        read_by: for one's own sent messages, the other users whose read receipt reached
            it, sorted (empty otherwise).
    """

    conversation_id: str
    op_id: str | None
    id: str | None
    seq: int | None
    sender: str
    body: str
    state: MessageState
    created_at: float
    edited_at: float | None = None
    deleted: bool = False
    reply_to: str | None = None
    reactions: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    read_by: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class HistoryPage:
    """A page of messages, oldest first, as ``SyncEngine.messages()`` returns it.

    Attributes:
        messages: the page, oldest first; local echoes come after the last server message.
        has_more: older messages exist (locally or on the server).
        from_store: True when the whole page came from the local store without a request.
        end_of_history: the server said there is nothing older than this page.
    """

    messages: tuple[Message, ...]
    has_more: bool
    from_store: bool
    end_of_history: bool = False


@attrs.frozen(kw_only=True)
class OutboxItem:
    """One queued operation.

    Attributes:
        op_id: client-generated, time-ordered id; the server deduplicates on it forever.
        kind: what the operation does.
        conversation_id: the conversation it applies to.
        payload: the operation's fields as sent on the wire (body, message_id, seq, ...).
        state: PENDING, SENDING, SENT or FAILED.
        attempts: how many pushes were tried.
        next_attempt_at: earliest time for the next push, if backing off.
        last_error: the last failure's reason (``code: reason``), if any.
        created_at: local time it was queued.
    """

    op_id: str
    kind: OpKind
    conversation_id: str
    payload: dict[str, object]
    state: OutboxState
    attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    created_at: float = 0.0


@attrs.frozen(kw_only=True)
class Presence:
    """A user's presence as last reported by the server."""

    user: str
    status: PresenceStatus
    last_seen: float | None = None


@attrs.frozen(kw_only=True)
class Typing:
    """Someone typing in a conversation, until ``expires_at`` (local time)."""

    user: str
    conversation_id: str
    expires_at: float


@attrs.frozen(kw_only=True)
class SyncHealth:
    """How well the store is in sync, derived from the store itself (never from a flag).

    Attributes:
        state: the connection state last recorded by the syncing process.
        pending: outbox items waiting to be pushed.
        sending: outbox items pushed but not yet acknowledged.
        failed: outbox items the server refused permanently.
        oldest_pending_age_s: age of the oldest pending or sending item, in seconds.
        cursor: the persisted stream position (an opaque token on a Matrix homeserver).
        last_sync_at: when a catch-up last reached the end of the stream.
        open_gaps: conversations with a detected seq gap not yet filled.
        conversations: number of conversations stored.
        messages: number of messages stored.
    """

    state: ConnectionState
    pending: int
    sending: int
    failed: int
    oldest_pending_age_s: float | None
    cursor: int | str
    last_sync_at: float | None
    open_gaps: int
    conversations: int
    messages: int

    @property
    def in_sync(self) -> bool:
        """True only when nothing waits to be pushed and no gap is open."""
        return self.pending == 0 and self.sending == 0 and self.open_gaps == 0
