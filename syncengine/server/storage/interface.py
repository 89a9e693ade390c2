"""The reference server's storage interface: what a database must offer the server.

:class:`ServerStorage` is split by concern (users and tokens; conversations and members;
the event log, messages and operation records). Reads are methods of the storage; every
durable change happens inside :meth:`ServerStorage.write`, which yields a :class:`WriteTx`:
one transaction, one ``pos`` order, and the list of :class:`Committed` events to fan out
once it commits. The business rules are not here (they are in
:mod:`syncengine.server.rules` and :mod:`syncengine.server.writes`), so a second database
implements only storage.

Nothing here names a database library: values in and out are plain Python and protocol
types. The SQLite implementation is :class:`~syncengine.server.storage.sqlite.SqliteStorage`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

import attrs

from syncengine.protocol.bodies import ConversationSnapshot, HistoryMessage, OpResult
from syncengine.protocol.events import DurableEvent

__all__ = [
    "Committed",
    "ConversationRow",
    "ConversationStorage",
    "ConversationWrites",
    "Identity",
    "LogStorage",
    "LogWrites",
    "MessageRow",
    "OpRecord",
    "PasswordRecord",
    "ServerStorage",
    "UserStorage",
    "WriteTx",
]


@attrs.frozen
class Committed:
    """A durable event that was committed, with the users allowed to see it.

    Attributes:
        pos: its stream position.
        conversation_id: its conversation.
        data: its JSON text, as stored and as sent.
        audience: the users it is delivered to (the members after the event, plus a user
            the event removes).
    """

    pos: int
    conversation_id: str
    data: str
    audience: frozenset[str]


class PasswordRecord(NamedTuple):
    """A user's stored password hash."""

    salt: bytes
    pw_hash: bytes
    params: str


class Identity(NamedTuple):
    """Who a valid token belongs to, and when it expires."""

    user: str
    device: str
    expires_ms: int


@attrs.frozen(kw_only=True)
class ConversationRow:
    """A conversation as stored (``origin`` fingerprints its creation)."""

    id: str
    title: str
    created_by: str
    created_ms: int
    created_pos: int
    last_seq: int
    origin: str


@attrs.frozen(kw_only=True)
class MessageRow:
    """A message's current state, as stored."""

    message_id: str
    conversation_id: str
    seq: int
    op_id: str | None
    sender: str
    device: str | None
    body: str
    ts_ms: int
    edited_ms: int | None
    deleted: bool


@attrs.frozen(kw_only=True)
class OpRecord:
    """The idempotency record of one operation: its kind, payload hash and result."""

    kind: str
    payload_hash: str
    result: OpResult


class UserStorage(Protocol):
    """Users, devices and tokens (the token itself is never stored, only its hash)."""

    def password_record(self, user: str) -> PasswordRecord | None:
        """The user's password hash, or None if the user does not exist."""

    def create_user(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> bool:
        """Create a user; False when it already exists."""

    def set_password(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> None:
        """Create a user or replace their password."""

    def issue_token(self, user: str, device: str, ttl_s: float) -> str:
        """Record the device's login and return a new random token (stored hashed)."""

    def authenticate(self, token: str) -> Identity | None:
        """The identity of a valid, unexpired token, else None."""

    def set_last_seen(self, user: str, ms: int) -> None:
        """Remember when a user was last connected (survives restarts)."""

    def last_seen(self, users: Sequence[str]) -> dict[str, int | None]:
        """The stored ``last_seen_ms`` of each user (None when never seen or unknown)."""

    def users(self) -> list[str]:
        """Every user name, sorted."""

    def blocked_by(self, user: str) -> list[str]:
        """The users ``user`` has blocked (who may not add them to a conversation), sorted."""

    def set_blocked(self, user: str, other: str, blocked: bool) -> None:
        """Block (``blocked=True``) or unblock ``other`` for ``user``; idempotent."""


class ConversationStorage(Protocol):
    """Conversations and their members, read outside a write."""

    def is_member(self, conversation_id: str, user: str) -> bool:
        """Whether ``user`` is a member of the conversation now."""

    def members(self, conversation_id: str) -> tuple[str, ...]:
        """The members now, sorted (empty for an unknown conversation)."""

    def snapshot(self, conversation_id: str, viewer: str) -> ConversationSnapshot | None:
        """The conversation as ``viewer`` sees it, or None when it does not exist."""

    def conversations_of(self, user: str) -> tuple[list[ConversationSnapshot], int]:
        """The conversations ``user`` is a member of now, and the head they were read at."""

    def shared_users(self, user: str) -> list[str]:
        """Every user who shares a conversation with ``user`` (``user`` included), sorted."""

    def all_conversations(self) -> list[dict[str, Any]]:
        """Every conversation (``id``, ``title``, ``members``, ``last_seq``, ``created_by``)."""


class LogStorage(Protocol):
    """The event log, messages and operation records, read outside a write."""

    @property
    def head(self) -> int:
        """The position of the last committed event (0 when the log is empty)."""

    @property
    def oldest_pos(self) -> int:
        """The oldest position the log still serves."""

    def pull(self, user: str, since: int, limit: int) -> tuple[list[str], int, bool]:
        """The JSON texts of the events visible to ``user`` after ``since``, the cursor to
        continue from, and whether more may wait.

        Raises:
            CursorExpired: see :func:`syncengine.server.rules.check_cursor`.
        """

    def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> tuple[list[HistoryMessage], bool]:
        """Messages with ``seq < before``, oldest first, and whether nothing older exists."""

    def op_result(self, user: str, device: str, op_id: str) -> dict[str, Any] | None:
        """The recorded result of an operation, or None if the server never saw it."""

    def all_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every message of a conversation in ``seq`` order, with its device (an oracle)."""

    def all_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Every retained event after ``since`` in ``pos`` order, decoded (an oracle)."""


class ConversationWrites(Protocol):
    """Conversations and members inside a write transaction."""

    def conversation(self, conversation_id: str) -> ConversationRow | None:
        """The stored conversation, or None."""

    def insert_conversation(self, row: ConversationRow, members: Iterable[str]) -> None:
        """Store a new conversation and its first members (members from ``row.created_pos``)."""

    def set_title(self, conversation_id: str, title: str) -> None:
        """Change the title."""

    def members(self, conversation_id: str) -> tuple[str, ...]:
        """The members now, sorted."""

    def is_member(self, conversation_id: str, user: str) -> bool:
        """Whether ``user`` is a member now."""

    def unknown_users(self, users: Iterable[str]) -> list[str]:
        """The names in ``users`` that have no account on this server, sorted."""

    def add_member(self, conversation_id: str, user: str, from_pos: int) -> None:
        """Add a member who sees events from ``from_pos`` on."""

    def remove_member(self, conversation_id: str, user: str, to_pos: int) -> None:
        """Remove a member who sees events up to ``to_pos`` (included)."""

    def read_seq(self, conversation_id: str, user: str) -> int:
        """``user``'s read marker (0 when never set)."""

    def set_read_seq(self, conversation_id: str, user: str, seq: int) -> None:
        """Move ``user``'s read marker."""

    def snapshot(self, conversation_id: str, viewer: str) -> ConversationSnapshot | None:
        """The conversation as ``viewer`` sees it, or None when it does not exist."""

    def blockers_of(self, actor: str, users: Sequence[str]) -> tuple[str, ...]:
        """Those of ``users`` who have blocked ``actor``, sorted."""


class LogWrites(Protocol):
    """The event log, messages and operation records inside a write transaction."""

    committed: list[Committed]

    @property
    def head(self) -> int:
        """The position of the last event written (this transaction's included)."""

    def now_ms(self) -> int:
        """Server time in ms, never going backwards."""

    def append(
        self,
        conversation_id: str,
        make: Callable[[int, int, int], DurableEvent],
        audience: Iterable[str],
    ) -> DurableEvent:
        """Append the event ``make(pos, seq, ts_ms)`` with the next ``pos`` and the
        conversation's next ``seq``, and add it to :attr:`committed`."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested transaction: on an exception, its writes, events and head are undone."""

    def insert_message(self, row: MessageRow) -> None:
        """Store a new message."""

    def message(self, message_id: str) -> MessageRow | None:
        """A message's current state, or None."""

    def edit_message(self, message_id: str, body: str, edited_ms: int) -> None:
        """Replace a message's body."""

    def delete_message(self, message_id: str) -> None:
        """Mark a message deleted and forget its body."""

    def op_record(self, user: str, device: str, op_id: str) -> OpRecord | None:
        """The idempotency record of an operation, or None."""

    def record_op(self, user: str, device: str, op_id: str, record: OpRecord) -> None:
        """Write an operation's idempotency record (in the same transaction as its effect)."""


class WriteTx(ConversationWrites, LogWrites, Protocol):
    """One open write transaction of a :class:`ServerStorage`."""


class ServerStorage(UserStorage, ConversationStorage, LogStorage, Protocol):
    """Everything the reference server keeps. Thread-safe.

    Attributes:
        closed: True once :meth:`close` ran.
    """

    closed: bool

    def now_ms(self) -> int:
        """Server time in ms, never going backwards (so ``ts_ms`` follows ``pos``)."""

    def write(self) -> AbstractContextManager[WriteTx]:
        """One write transaction; on an exception nothing is kept."""

    def close(self) -> None:
        """Release the database."""
