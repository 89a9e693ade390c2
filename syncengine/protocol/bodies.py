"""Every request and response body of protocol v1, and every live control frame, as a type.

The field order of each class is the key order on the wire: encoding a body with
:func:`syncengine.protocol.codec.encode_body` gives the same bytes the reference server has
always sent (``tests/data/frames/`` holds the recorded ones; ``docs/protocol.schema.json`` is
their schema). Server events (``message_received``, …) are in
:mod:`syncengine.protocol.events`.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from syncengine.protocol.events import ServerEvent

__all__ = [
    "AddMemberRequest",
    "AuthFrame",
    "BlockList",
    "ConversationList",
    "ConversationSnapshot",
    "CreateConversationRequest",
    "ErrorBody",
    "EventPage",
    "Health",
    "HistoryMessage",
    "HistoryPageWire",
    "LoginRequest",
    "LoginResponse",
    "OpResult",
    "OpsRequest",
    "OpsResponse",
    "PresenceEntry",
    "PresenceFrame",
    "PresenceList",
    "ReadyFrame",
    "RenameRequest",
    "TypingFrame",
]


# --- requests -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LoginRequest:
    """``POST /v1/login``."""

    user: str
    password: str
    device: str


@attrs.frozen(kw_only=True)
class CreateConversationRequest:
    """``POST /v1/conversations``: ``id`` is chosen by the client (a UUID)."""

    id: str
    title: str
    members: tuple[str, ...]


@attrs.frozen(kw_only=True)
class RenameRequest:
    """``PATCH /v1/conversations/{id}``."""

    title: str


@attrs.frozen(kw_only=True)
class AddMemberRequest:
    """``POST /v1/conversations/{id}/members``."""

    user: str


@attrs.frozen(kw_only=True)
class OpsRequest:
    """``POST /v1/ops``: raw operation objects (see :mod:`syncengine.protocol.ops`)."""

    ops: tuple[dict[str, Any], ...]


# --- responses ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Health:
    """``GET /v1/health``."""

    ok: bool
    head: int


@attrs.frozen(kw_only=True)
class LoginResponse:
    """``POST /v1/login``: the bearer token for one (user, device)."""

    token: str
    user: str
    device: str
    expires_in_s: int


@attrs.frozen(kw_only=True)
class ErrorBody:
    """Every rejection: a machine code and one line (more fields travel beside them)."""

    code: str
    reason: str


@attrs.frozen(kw_only=True)
class ConversationSnapshot:
    """A conversation as one member sees it now."""

    id: str
    title: str
    members: tuple[str, ...]
    last_seq: int
    created_by: str
    read_seq: int = 0


@attrs.frozen(kw_only=True)
class ConversationList:
    """``GET /v1/conversations``: the caller's conversations and the head they were read at."""

    conversations: tuple[ConversationSnapshot, ...]
    head: int


@attrs.frozen(kw_only=True)
class PresenceEntry:
    """One user's presence as ``GET /v1/presence`` reports it."""

    user: str
    status: str
    last_seen_ms: int | None
    ts_ms: int


@attrs.frozen(kw_only=True)
class PresenceList:
    """``GET /v1/presence``: everyone who shares a conversation with the caller."""

    presence: tuple[PresenceEntry, ...]


@attrs.frozen(kw_only=True)
class BlockList:
    """``GET``/``PUT``/``DELETE /v1/blocks``: the users the caller has blocked, sorted."""

    blocked: tuple[str, ...]


@attrs.frozen(kw_only=True)
class EventPage:
    """One page of ``GET /v1/events``: the events, the cursor to continue from, and whether
    more are waiting."""

    events: tuple[ServerEvent, ...]
    #: An int in protocol v1; an opaque string from a Matrix transport (a ``/sync`` token).
    next: int | str
    has_more: bool
    #: Events that could not be decoded (raw JSON, error): quarantined, passed over.
    bad: tuple[tuple[str, str], ...] = ()


@attrs.frozen(kw_only=True)
class OpResult:
    """The server's verdict on one pushed operation.

    ``status`` is ``"applied"``, ``"duplicate"`` (a replay: the original result is returned) or
    ``"rejected"`` (permanent; ``code`` and ``reason`` say why).
    """

    op_id: str
    status: str
    code: str | None = None
    reason: str | None = None
    status_code: int | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    seq: int | None = None
    pos: int | None = None
    ts_ms: int | None = None


@attrs.frozen(kw_only=True)
class OpsResponse:
    """``POST /v1/ops``: one result per operation, in request order."""

    results: tuple[OpResult, ...]


@attrs.frozen(kw_only=True)
class HistoryMessage:
    """A message as ``GET /v1/conversations/{id}/messages`` returns it: its current state.

    ``seq`` is None only from a Matrix transport (its server numbers nothing).
    """

    message_id: str
    conversation_id: str
    seq: int | None
    op_id: str | None = None
    sender: str
    body: str
    ts_ms: int
    edited_ms: int | None = None
    deleted: bool = False


@attrs.frozen(kw_only=True)
class HistoryPageWire:
    """A page of history, oldest first, with the end-of-history signal.

    ``prev`` is the token to pass as ``before`` for the next (older) page when the server
    paginates by token (Matrix); None in protocol v1 (page by the oldest ``seq``), and then
    not encoded.
    """

    messages: tuple[HistoryMessage, ...]
    end_of_history: bool
    prev: str | None = None


# --- live control frames ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AuthFrame:
    """The client's first live frame."""

    type: ClassVar[str] = "auth"
    token: str


@attrs.frozen(kw_only=True)
class ReadyFrame:
    """The server's answer to a good ``auth`` frame, with the head at registration."""

    type: ClassVar[str] = "ready"
    user: str
    device: str
    head: int


@attrs.frozen(kw_only=True)
class TypingFrame:
    """The client starts or stops typing in a conversation."""

    type: ClassVar[str] = "typing"
    conversation_id: str
    typing: bool


@attrs.frozen(kw_only=True)
class PresenceFrame:
    """The client sets its own status (``online`` or ``away``)."""

    type: ClassVar[str] = "presence"
    status: str
