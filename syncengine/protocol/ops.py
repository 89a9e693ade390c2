"""Operations: their limits, their typed form, and the one place that validates them.

An operation travels as a JSON object (``op_id``, ``kind``, ``conversation_id`` and the
fields of its kind). Both ends read the limits here. The two ends check at different moments
and answer differently, so there are two entry points:

- :func:`validate_op` runs on the client before an operation is queued, and raises
  :class:`~syncengine.errors.UsageError` (the caller made a mistake; nothing is written). It is
  stricter than the server where an empty value is surely a mistake (an empty message).
- :func:`parse_batch` and :func:`parse_op` run on the server and raise a
  :class:`~syncengine.protocol.errors.Rejection` for that one operation (it becomes a
  ``rejected`` result; the rest of the batch goes on).

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import orjson

from syncengine.errors import UsageError
from syncengine.models import OpKind
from syncengine.protocol.errors import Invalid, TooLarge

__all__ = [
    "HISTORY_LIMIT_DEFAULT",
    "HISTORY_LIMIT_MAX",
    "MAX_BATCH",
    "MAX_BODY_CHARS",
    "MAX_MEMBERS",
    "MAX_OP_ID_CHARS",
    "MAX_TITLE_CHARS",
    "MAX_EMOJI_CHARS",
    "MEMBER_KINDS",
    "ReactOp",
    "OP_FIELDS",
    "PAGE_BYTES_DEFAULT",
    "PAGE_BYTES_MAX",
    "PULL_LIMIT_DEFAULT",
    "PULL_LIMIT_MAX",
    "CreateConversationOp",
    "DeleteOp",
    "EditOp",
    "MarkReadOp",
    "MemberOp",
    "Op",
    "SendOp",
    "check_conversation_id",
    "check_device",
    "check_members",
    "check_text",
    "check_title",
    "check_user",
    "is_conversation_id",
    "op_id_of",
    "op_to_wire",
    "parse_batch",
    "parse_op",
    "payload_hash",
    "validate_op",
]

MAX_BATCH = 500  # operations per POST /v1/ops
MAX_BODY_CHARS = 16_000  # characters of a message body
MAX_TITLE_CHARS = 200  # characters of a conversation title
MAX_MEMBERS = 1_000  # members of one conversation
MAX_OP_ID_CHARS = 100
PULL_LIMIT_DEFAULT = 500
PULL_LIMIT_MAX = 1_000
HISTORY_LIMIT_DEFAULT = 50
HISTORY_LIMIT_MAX = 200
# A pull or history page is bounded in bytes as well as in events or messages: the reference
# server's budget (configurable) may not pass half the body a client accepts
# (codec.MAX_PAGE_BYTES, 32 MiB), so no legal content yields a page a client refuses. One
# event alone always fits: the largest legal one (a 16,000-character body of control
# characters, 6 bytes each once escaped) is under 100 KB.
PAGE_BYTES_DEFAULT = 4 << 20
PAGE_BYTES_MAX = 16 << 20

# Integers must fit SQLite's INTEGER at both ends: signed 64 bits.
_MAX_INT = (1 << 63) - 1

_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}")
_OP_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_OP_ID_CHARS}}}")

#: The fields of an operation that its idempotency hash covers; anything else a client adds is
#: ignored (by the hash and by the server).
OP_FIELDS = (
    "op_id",
    "kind",
    "conversation_id",
    "body",
    "target_op_id",
    "message_id",
    "seq",
    "title",
    "members",
    "user",
    "reply_to",
    "reply_to_op_id",
    "emoji",
    "remove",
)

MAX_EMOJI_CHARS = 32  # characters of one reaction


# --- names and values ---------------------------------------------------------------------


def check_user(value: Any, what: str = "user") -> str:
    """Validate a user name: 1 to 64 of ``A-Z a-z 0-9 _ . @ -``, starting alphanumeric.

    Raises:
        Invalid: when it is not one.
    """
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise Invalid(f"{what} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    return value


def check_device(value: Any) -> str:
    """Validate a device name: 1 to 64 of ``A-Z a-z 0-9 _ . @ : -``, starting alphanumeric.

    Raises:
        Invalid: when it is not one.
    """
    if not isinstance(value, str) or not _DEVICE_RE.fullmatch(value):
        raise Invalid("device must be 1-64 characters of A-Z a-z 0-9 _ . @ : -")
    return value


def is_conversation_id(value: Any) -> bool:
    """True for a UUID in its canonical form (36 lowercase hex characters and hyphens)."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def check_conversation_id(value: Any) -> str:
    """Validate a client-chosen conversation id (a canonical lowercase UUID).

    Raises:
        Invalid: when it is not one.
    """
    if not is_conversation_id(value):
        raise Invalid("conversation id must be a lowercase UUID string")
    return str(value)


def check_title(value: Any) -> str:
    """Validate a title: a string of at most 200 characters.

    Raises:
        Invalid: for a non-string.
        TooLarge: when it is too long.
    """
    if not isinstance(value, str):
        raise Invalid("title must be a string")
    if len(value) > MAX_TITLE_CHARS:
        raise TooLarge(f"title longer than {MAX_TITLE_CHARS} characters")
    return value


def check_members(value: Any, creator: str) -> tuple[str, ...]:
    """Validate a member list and return it sorted, without duplicates, creator included.

    Raises:
        Invalid: for a bad list or name.
        TooLarge: past 1000 members.
    """
    if not isinstance(value, list):
        raise Invalid("members must be a list of user names")
    if len(value) > MAX_MEMBERS:
        raise TooLarge(f"more than {MAX_MEMBERS} members")
    names = {check_user(name, "member") for name in value}
    names.add(creator)
    if len(names) > MAX_MEMBERS:
        raise TooLarge(f"more than {MAX_MEMBERS} members")
    return tuple(sorted(names))


def _check_body(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("body must be a string")
    if len(value) > MAX_BODY_CHARS:
        raise TooLarge(f"body longer than {MAX_BODY_CHARS} characters")
    return value


def _check_op_ref(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _OP_ID_RE.fullmatch(value):
        raise Invalid(f"{what} must be 1-{MAX_OP_ID_CHARS} printable ASCII characters")
    return value


# --- typed operations ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SendOp:
    """Send a message, maybe as a reply: to ``reply_to`` (a server message id) or to the
    message sent by this user and device's op ``reply_to_op_id`` (not yet acknowledged when
    it was queued)."""

    op_id: str
    conversation_id: str
    body: str
    reply_to: str | None = None
    reply_to_op_id: str | None = None


@attrs.frozen(kw_only=True)
class EditOp:
    """Replace a message's body; the target is ``message_id`` or the sending ``target_op_id``."""

    op_id: str
    conversation_id: str
    body: str
    message_id: str | None
    target_op_id: str | None


@attrs.frozen(kw_only=True)
class DeleteOp:
    """Delete a message; the target is ``message_id`` or the sending ``target_op_id``."""

    op_id: str
    conversation_id: str
    message_id: str | None
    target_op_id: str | None


@attrs.frozen(kw_only=True)
class MarkReadOp:
    """Mark a conversation read up to ``seq``."""

    op_id: str
    conversation_id: str
    seq: int


@attrs.frozen(kw_only=True)
class CreateConversationOp:
    """Create a conversation (the creator is added to ``members``)."""

    op_id: str
    conversation_id: str
    title: str
    members: tuple[str, ...]


@attrs.frozen(kw_only=True)
class MemberOp:
    """Add (``present``) or remove ``user`` as a member of a conversation."""

    op_id: str
    conversation_id: str
    user: str
    present: bool


@attrs.frozen(kw_only=True)
class ReactOp:
    """Add (or, with ``remove``, take back) one's reaction ``emoji`` on message ``message_id``."""

    op_id: str
    conversation_id: str
    message_id: str
    emoji: str
    remove: bool


Op = SendOp | EditOp | DeleteOp | MarkReadOp | CreateConversationOp | MemberOp | ReactOp


def _emoji_problem(emoji: Any) -> str | None:
    """Why ``emoji`` is not a valid reaction (1 to 32 characters, no whitespace), or None."""
    if not isinstance(emoji, str) or not 0 < len(emoji) <= MAX_EMOJI_CHARS:
        return f"emoji must be 1 to {MAX_EMOJI_CHARS} characters"
    if any(ch.isspace() for ch in emoji) or not emoji.isprintable():
        return "emoji must be printable, without whitespace"
    return None

#: The member operations and whether each one makes its ``user`` a member.
MEMBER_KINDS = {"add_member": True, "remove_member": False}


# --- the server's reading -----------------------------------------------------------------


def op_id_of(raw: Any) -> str | None:
    """The op id of a raw operation, or None when it has no valid one."""
    if not isinstance(raw, dict):
        return None
    op_id = raw.get("op_id")
    if isinstance(op_id, str) and _OP_ID_RE.fullmatch(op_id):
        return op_id
    return None


def parse_batch(obj: Any) -> list[dict[str, Any]]:
    """Check the envelope of ``POST /v1/ops`` and return its raw operations.

    Every operation must be an object with a valid ``op_id`` (without one, no per-op result
    could name it); anything else is checked per operation by :func:`parse_op`.

    Raises:
        Invalid: for a bad envelope.
        TooLarge: past 500 operations.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("ops"), list):
        raise Invalid('expected {"ops": [...]}')
    ops: list[Any] = obj["ops"]
    if len(ops) > MAX_BATCH:
        raise TooLarge(f"more than {MAX_BATCH} operations in one request")
    for index, raw in enumerate(ops):
        if op_id_of(raw) is None:
            raise Invalid(f"ops[{index}] must be an object with a string op_id")
    return ops


def parse_op(raw: Mapping[str, Any], creator: str) -> Op:
    """Turn a raw operation into a typed one.

    Args:
        raw: the operation object from the request (its ``op_id`` already checked).
        creator: the calling user (a ``create_conversation`` always includes them).

    Raises:
        Invalid: for a wrong value, for this operation only.
        TooLarge: for a value over its limit, for this operation only.
    """
    op_id = _check_op_ref(raw.get("op_id"), "op_id")
    kind = raw.get("kind")
    conversation_id = raw.get("conversation_id")
    if kind == "create_conversation":
        return CreateConversationOp(
            op_id=op_id,
            conversation_id=check_conversation_id(conversation_id),
            title=check_title(raw.get("title", "")),
            members=check_members(raw.get("members", []), creator),
        )
    if not isinstance(conversation_id, str):
        raise Invalid("conversation_id must be a string")
    if kind == "send":
        reply_to, reply_to_op_id = raw.get("reply_to"), raw.get("reply_to_op_id")
        if reply_to is not None and not isinstance(reply_to, str):
            raise Invalid("reply_to must be a message id")
        if reply_to_op_id is not None:
            reply_to_op_id = _check_op_ref(reply_to_op_id, "reply_to_op_id")
        if reply_to is not None and reply_to_op_id is not None:
            raise Invalid("give at most one of reply_to and reply_to_op_id")
        return SendOp(
            op_id=op_id,
            conversation_id=conversation_id,
            body=_check_body(raw.get("body")),
            reply_to=reply_to,
            reply_to_op_id=reply_to_op_id,
        )
    if kind in ("edit", "delete"):
        return _parse_change(raw, kind, op_id, conversation_id)
    if kind == "mark_read":
        seq = raw.get("seq")
        if type(seq) is not int or seq < 0:
            raise Invalid("seq must be a non-negative integer")
        return MarkReadOp(op_id=op_id, conversation_id=conversation_id, seq=seq)
    if kind == "react":
        return _parse_react(raw, op_id, conversation_id)
    if isinstance(kind, str) and kind in MEMBER_KINDS:  # a list or object is no kind
        return MemberOp(
            op_id=op_id,
            conversation_id=conversation_id,
            user=check_user(raw.get("user")),
            present=MEMBER_KINDS[kind],
        )
    raise Invalid(f"unknown operation kind {kind!r}")


def _parse_change(
    raw: Mapping[str, Any], kind: str, op_id: str, conversation_id: str
) -> EditOp | DeleteOp:
    """An edit or a delete: exactly one of ``message_id`` and ``target_op_id`` names it."""
    message_id = raw.get("message_id")
    target_op_id = raw.get("target_op_id")
    if message_id is not None and not isinstance(message_id, str):
        raise Invalid("message_id must be a string")
    if target_op_id is not None:
        target_op_id = _check_op_ref(target_op_id, "target_op_id")
    if (message_id is None) == (target_op_id is None):
        raise Invalid("give exactly one of message_id and target_op_id")
    if kind == "delete":
        return DeleteOp(
            op_id=op_id,
            conversation_id=conversation_id,
            message_id=message_id,
            target_op_id=target_op_id,
        )
    return EditOp(
        op_id=op_id,
        conversation_id=conversation_id,
        body=_check_body(raw.get("body")),
        message_id=message_id,
        target_op_id=target_op_id,
    )


def _parse_react(raw: Mapping[str, Any], op_id: str, conversation_id: str) -> ReactOp:
    message_id, emoji, remove = raw.get("message_id"), raw.get("emoji"), raw.get("remove", False)
    if not isinstance(message_id, str) or not message_id:
        raise Invalid("message_id must be a message id")
    problem = _emoji_problem(emoji)
    if problem is not None:
        raise Invalid(problem)
    if type(remove) is not bool:
        raise Invalid("remove must be true or false")
    return ReactOp(
        op_id=op_id,
        conversation_id=conversation_id,
        message_id=message_id,
        emoji=emoji,
        remove=remove,
    )


def payload_hash(raw: Mapping[str, Any]) -> str:
    """The idempotency hash of a raw operation: SHA-256 of its protocol fields, key-sorted.

    Fields the protocol does not define are left out, so a client that adds its own metadata
    to a replay is not told ``op_id_conflict``.
    """
    fields = {key: raw[key] for key in OP_FIELDS if key in raw}
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


# --- the client's side --------------------------------------------------------------------


class _Queued(Protocol):
    """What :func:`op_to_wire` reads of an outbox item."""

    @property
    def op_id(self) -> str: ...

    @property
    def kind(self) -> OpKind: ...

    @property
    def conversation_id(self) -> str: ...

    @property
    def payload(self) -> Mapping[str, Any]: ...


def op_to_wire(item: _Queued) -> dict[str, Any]:
    """The JSON object pushed for one outbox item: its id, kind, conversation and payload.

    Args:
        item: an :class:`~syncengine.models.OutboxItem` (or anything with its four fields).
    """
    out: dict[str, Any] = {
        "op_id": item.op_id,
        "kind": OpKind(item.kind).value,
        "conversation_id": item.conversation_id,
    }
    out.update(item.payload)
    return out


def check_text(value: str, what: str) -> None:
    """Refuse a string that is not valid text.

    SQLite and the wire need valid UTF-8: a lone surrogate would fail deep inside the write
    (UnicodeEncodeError from sqlite3, JSONEncodeError from orjson) instead of here.

    Raises:
        UsageError: for a lone surrogate.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid text (lone surrogate)") from None


def validate_op(kind: OpKind | str, conversation_id: str, payload: Mapping[str, Any]) -> None:
    """Check an operation before the client queues it; nothing is written when it fails.

    Args:
        kind: the operation kind.
        conversation_id: its conversation.
        payload: the fields of its kind (``body``, ``message_id``, ``seq``, ``title``, …).

    Raises:
        UsageError: naming the first wrong field.
    """
    kind = OpKind(kind)
    if not isinstance(conversation_id, str) or not conversation_id:
        raise UsageError("conversation_id must be a non-empty string")
    check_text(conversation_id, "conversation_id")
    if kind in (OpKind.SEND, OpKind.EDIT):
        _validate_body(payload.get("body"))
    if kind is OpKind.SEND and payload.get("reply_to") and payload.get("reply_to_op_id"):
        raise UsageError("give at most one of reply_to and reply_to_op_id")
    if kind in (OpKind.EDIT, OpKind.DELETE) and not (
        payload.get("message_id") or payload.get("target_op_id")
    ):
        raise UsageError("edit and delete need message_id or target_op_id")
    if kind is OpKind.MARK_READ:
        seq = payload.get("seq")
        if type(seq) is not int or not 0 <= seq <= _MAX_INT:
            raise UsageError("seq must be a non-negative 64-bit integer")
    if kind is OpKind.CREATE_CONVERSATION:
        _validate_creation(payload)
    if kind is OpKind.REACT:
        problem = _emoji_problem(payload.get("emoji"))
        if problem is not None or not payload.get("message_id"):
            raise UsageError(problem or "a reaction needs the message_id of a sent message")
    if kind.value in MEMBER_KINDS:
        user = payload.get("user")
        if not isinstance(user, str) or not _USER_RE.fullmatch(user):
            raise UsageError(f"user {user!r} is not 1-64 characters of A-Z a-z 0-9 _ . @ -")
    try:
        # The payload travels as JSON: refuse what cannot (sets, objects, lone surrogates in
        # any string, integers beyond 64 bits) before anything is written.
        orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise UsageError(f"payload cannot be sent: {exc}") from None


def _validate_body(body: Any) -> None:
    if not isinstance(body, str) or not body.strip():
        raise UsageError("body must be a non-empty string")
    if len(body) > MAX_BODY_CHARS:
        raise UsageError(f"body is {len(body)} characters; the limit is {MAX_BODY_CHARS}")
    check_text(body, "body")


def _validate_creation(payload: Mapping[str, Any]) -> None:
    title = payload.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_CHARS:
        raise UsageError(f"title must be 1 to {MAX_TITLE_CHARS} characters")
    members = payload.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise UsageError("members must be a list of user names")
