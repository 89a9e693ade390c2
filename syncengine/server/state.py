"""Pure rules of the reference server: limits, name checks, operation parsing, rate limits.

Nothing here touches SQLite, sockets or the clock (time is passed in), so every rule can be
tested on its own and reused by a model server in the engine's tests.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

__all__ = [
    "HISTORY_LIMIT_DEFAULT",
    "HISTORY_LIMIT_MAX",
    "MAX_BATCH",
    "MAX_BODY_CHARS",
    "MAX_MEMBERS",
    "MAX_OP_ID_CHARS",
    "MAX_TITLE_CHARS",
    "PULL_LIMIT_DEFAULT",
    "PULL_LIMIT_MAX",
    "PULL_SCAN_MAX",
    "ApiError",
    "CreateConversationOp",
    "DeleteOp",
    "EditOp",
    "MarkReadOp",
    "Op",
    "RateLimiter",
    "SendOp",
    "TokenBucket",
    "check_conversation_id",
    "check_device",
    "check_members",
    "check_title",
    "check_user",
    "hash_password",
    "is_conversation_id",
    "op_id_of",
    "parse_batch",
    "parse_op",
    "payload_hash",
    "retry_after_ms",
    "scrypt_params",
]

MAX_BATCH = 500  # operations per POST /v1/ops
MAX_BODY_CHARS = 16_000  # characters of a message body
MAX_TITLE_CHARS = 200  # characters of a conversation title
MAX_MEMBERS = 1_000  # members of one conversation
MAX_OP_ID_CHARS = 100
PULL_LIMIT_DEFAULT = 500
PULL_LIMIT_MAX = 1_000
PULL_SCAN_MAX = 20_000  # log rows one pull may scan for the caller's visible events
HISTORY_LIMIT_DEFAULT = 50
HISTORY_LIMIT_MAX = 200

_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}")
_OP_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_OP_ID_CHARS}}}")

# The fields of an operation that its idempotency hash covers; anything else a client adds is
# ignored (by the hash and by the server).
_OP_FIELDS = (
    "op_id",
    "kind",
    "conversation_id",
    "body",
    "target_op_id",
    "message_id",
    "seq",
    "title",
    "members",
)


class ApiError(Exception):
    """A rejection with an HTTP status, a machine code and a one-line reason.

    Attributes:
        status: the HTTP status (or the ``status_code`` of a rejected operation).
        code: the machine-readable code (``not_found``, ``too_large``, …).
        reason: one human-readable line.
        extra: more fields for the JSON body (``oldest_pos``, ``retry_after_ms``).
    """

    def __init__(self, status: int, code: str, reason: str, **extra: Any) -> None:
        super().__init__(f"{status} {code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body of this rejection."""
        return {"code": self.code, "reason": self.reason, **self.extra}


def _invalid(reason: str) -> ApiError:
    return ApiError(422, "invalid", reason)


def check_user(value: Any, what: str = "user") -> str:
    """Validate a user name: 1 to 64 of ``A-Z a-z 0-9 _ . @ -``, starting alphanumeric.

    Raises:
        ApiError: 422 ``invalid``.
    """
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise _invalid(f"{what} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    return value


def check_device(value: Any) -> str:
    """Validate a device name: 1 to 64 of ``A-Z a-z 0-9 _ . @ : -``, starting alphanumeric.

    Raises:
        ApiError: 422 ``invalid``.
    """
    if not isinstance(value, str) or not _DEVICE_RE.fullmatch(value):
        raise _invalid("device must be 1-64 characters of A-Z a-z 0-9 _ . @ : -")
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
        ApiError: 422 ``invalid``.
    """
    if not is_conversation_id(value):
        raise _invalid("conversation id must be a lowercase UUID string")
    return str(value)


def check_title(value: Any) -> str:
    """Validate a title: a string of at most 200 characters.

    Raises:
        ApiError: 422 ``invalid`` for a non-string, 413 ``too_large`` when too long.
    """
    if not isinstance(value, str):
        raise _invalid("title must be a string")
    if len(value) > MAX_TITLE_CHARS:
        raise ApiError(413, "too_large", f"title longer than {MAX_TITLE_CHARS} characters")
    return value


def check_members(value: Any, creator: str) -> tuple[str, ...]:
    """Validate a member list and return it sorted, without duplicates, creator included.

    Raises:
        ApiError: 422 ``invalid`` for a bad list or name, 413 ``too_large`` past 1000.
    """
    if not isinstance(value, list):
        raise _invalid("members must be a list of user names")
    if len(value) > MAX_MEMBERS:
        raise ApiError(413, "too_large", f"more than {MAX_MEMBERS} members")
    names = {check_user(name, "member") for name in value}
    names.add(creator)
    if len(names) > MAX_MEMBERS:
        raise ApiError(413, "too_large", f"more than {MAX_MEMBERS} members")
    return tuple(sorted(names))


def _check_body(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("body must be a string")
    if len(value) > MAX_BODY_CHARS:
        raise ApiError(413, "too_large", f"body longer than {MAX_BODY_CHARS} characters")
    return value


def _check_op_ref(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _OP_ID_RE.fullmatch(value):
        raise _invalid(f"{what} must be 1-{MAX_OP_ID_CHARS} printable ASCII characters")
    return value


@attrs.frozen(kw_only=True)
class SendOp:
    """Send a message."""

    op_id: str
    conversation_id: str
    body: str


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


Op = SendOp | EditOp | DeleteOp | MarkReadOp | CreateConversationOp


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
        ApiError: 422 ``invalid`` for a bad envelope, 413 ``too_large`` past 500 operations.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("ops"), list):
        raise _invalid('expected {"ops": [...]}')
    ops: list[Any] = obj["ops"]
    if len(ops) > MAX_BATCH:
        raise ApiError(413, "too_large", f"more than {MAX_BATCH} operations in one request")
    for index, raw in enumerate(ops):
        if op_id_of(raw) is None:
            raise _invalid(f"ops[{index}] must be an object with a string op_id")
    return ops


def parse_op(raw: Mapping[str, Any], creator: str) -> Op:
    """Turn a raw operation into a typed one.

    Args:
        raw: the operation object from the request (its ``op_id`` already checked).
        creator: the calling user (a ``create_conversation`` always includes them).

    Raises:
        ApiError: 422 ``invalid`` or 413 ``too_large``, for this operation only.
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
        raise _invalid("conversation_id must be a string")
    if kind == "send":
        return SendOp(
            op_id=op_id, conversation_id=conversation_id, body=_check_body(raw.get("body"))
        )
    if kind in ("edit", "delete"):
        message_id = raw.get("message_id")
        target_op_id = raw.get("target_op_id")
        if message_id is not None and not isinstance(message_id, str):
            raise _invalid("message_id must be a string")
        if target_op_id is not None:
            target_op_id = _check_op_ref(target_op_id, "target_op_id")
        if (message_id is None) == (target_op_id is None):
            raise _invalid("give exactly one of message_id and target_op_id")
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
    if kind == "mark_read":
        seq = raw.get("seq")
        if type(seq) is not int or seq < 0:
            raise _invalid("seq must be a non-negative integer")
        return MarkReadOp(op_id=op_id, conversation_id=conversation_id, seq=seq)
    raise _invalid(f"unknown operation kind {kind!r}")


def payload_hash(raw: Mapping[str, Any]) -> str:
    """The idempotency hash of a raw operation: SHA-256 of its protocol fields, key-sorted.

    Fields the protocol does not define are left out, so a client that adds its own metadata
    to a replay is not told ``op_id_conflict``.
    """
    fields = {key: raw[key] for key in _OP_FIELDS if key in raw}
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


@attrs.define
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` stored."""

    rate: float
    burst: float
    tokens: float = attrs.field(init=False)
    updated: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """Take one token at time ``now``.

        Returns:
            0.0 when allowed, else the seconds to wait until a token is available.
        """
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@attrs.define
class RateLimiter:
    """One token bucket per key (user name, connection)."""

    rate: float
    burst: float
    buckets: dict[str, TokenBucket] = attrs.field(factory=dict)

    def take(self, key: str, now: float) -> float:
        """Take one token for ``key``; 0.0 when allowed, else the seconds to wait."""
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take(now)

    def forget_idle(self, now: float) -> None:
        """Drop the buckets that have refilled completely (they carry no state)."""
        idle = [
            key
            for key, bucket in self.buckets.items()
            if bucket.updated is not None
            and bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.burst
        ]
        for key in idle:
            del self.buckets[key]


def hash_password(password: str, salt: bytes, params: str) -> bytes:
    """Hash a password with scrypt.

    Args:
        password: the password as given.
        salt: the user's random salt.
        params: ``"scrypt:N:r:p"``, stored with the hash so that the cost can change later.

    Returns:
        The 32-byte derived key.
    """
    _name, n, r, p = params.split(":")
    return hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=256 * int(n) * int(r) + (1 << 20),
        dklen=32,
    )


def scrypt_params(n: int) -> str:
    """The parameter string for a new hash with cost ``n`` (r=8, p=1)."""
    return f"scrypt:{n}:8:1"


def retry_after_ms(wait_s: float) -> int:
    """A wait in seconds as whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s * 1000))
