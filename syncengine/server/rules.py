"""Pure rules of the reference server: who may do what, and what each change leaves behind.

Every decision of the server that does not need its database lives here, as a function of
plain values: nothing touches SQLite, sockets or the clock (time is passed in). A rule that
refuses raises a domain error from :mod:`syncengine.protocol.errors` (``NotFound``,
``TooLarge``, …), never an HTTP status; the application reads statuses from
:data:`~syncengine.protocol.errors.ERROR_STATUS`. Shapes and limits of operations are in
:mod:`syncengine.protocol.ops`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence

import attrs
import orjson

from syncengine.protocol.bodies import OpResult
from syncengine.protocol.errors import (
    BadRequest,
    Conflict,
    CursorExpired,
    Forbidden,
    Invalid,
    NotFound,
    OpIdConflict,
    Rejection,
    TooLarge,
    UnknownUser,
)
from syncengine.protocol.ops import MAX_MEMBERS

__all__ = [
    "MAX_BLOCKS",
    "MAX_PASSWORD_CHARS",
    "MAX_QUERY_INT",
    "PULL_SCAN_MAX",
    "RateLimiter",
    "TokenBucket",
    "address_key",
    "applied",
    "check_block",
    "check_cursor",
    "check_epoch",
    "check_known_users",
    "check_may_add",
    "check_member_cap",
    "check_password",
    "check_query_int",
    "check_recreation",
    "check_reply_target",
    "check_target",
    "creation_origin",
    "epoch_chain",
    "epoch_key",
    "hash_password",
    "history_cut",
    "login_keys",
    "page_cut",
    "page_end",
    "presence_audience",
    "rate_budget",
    "read_advances",
    "rejected",
    "replayed",
    "require_member",
    "retry_after_ms",
    "scan_end",
    "scrypt_params",
    "target_message_id",
]

PULL_SCAN_MAX = 20_000  # log rows one pull may scan for the caller's visible events
MAX_PASSWORD_CHARS = 1024
MAX_BLOCKS = 1_000  # users one user may block
MAX_QUERY_INT = 1 << 62  # query integers are capped here (SQLite integers are 64-bit)


# --- access -------------------------------------------------------------------------------


def require_member(is_member: bool, what: str = "conversation") -> None:
    """Refuse a non-member as if the conversation did not exist (its existence is private).

    Raises:
        NotFound: when ``is_member`` is false.
    """
    if not is_member:
        raise NotFound(f"no such {what}")


def check_member_cap(members: int, already_member: bool) -> None:
    """Refuse a new member past :data:`~syncengine.protocol.ops.MAX_MEMBERS`.

    Re-adding a member changes nothing, so it is never refused.

    Raises:
        TooLarge: when a new member would pass the cap.
    """
    if not already_member and members >= MAX_MEMBERS:
        raise TooLarge(f"more than {MAX_MEMBERS} members")


def check_known_users(unknown: Sequence[str]) -> None:
    """Refuse a member who has no account on this server.

    A conversation with a member who does not exist would wait forever for someone who
    cannot log in (with closed registration) or, worse, for whoever registers the name
    later; a typo is far likelier. The server knows its users, so it says so.

    Args:
        unknown: the named members that have no account, sorted.

    Raises:
        UnknownUser: when any member named is unknown.
    """
    if unknown:
        raise UnknownUser(f"no such user: {', '.join(unknown)}")

def check_may_add(actor: str, blockers: Iterable[str]) -> None:
    """Who may add whom: anyone may add a user to a conversation, unless that user has
    blocked them. A user is never refused for adding themselves.

    Args:
        actor: who adds (or creates a conversation with members).
        blockers: those of the users being added who have blocked ``actor``.

    Raises:
        Forbidden: when any of them has (naming them, so the failed operation says why).
    """
    refusing = sorted({user for user in blockers if user != actor})
    if refusing:
        raise Forbidden(f"{', '.join(refusing)} does not accept being added by {actor}")


def check_block(user: str, other: str, blocked: int, already: bool) -> None:
    """Check that ``user`` may block ``other``.

    Args:
        user: who blocks.
        other: who is blocked.
        blocked: how many users ``user`` has blocked already.
        already: ``other`` is one of them (blocking again changes nothing).

    Raises:
        Invalid: blocking oneself.
        TooLarge: a new block past :data:`MAX_BLOCKS`.
    """
    if other == user:
        raise Invalid("you cannot block yourself")
    if not already and blocked >= MAX_BLOCKS:
        raise TooLarge(f"more than {MAX_BLOCKS} blocked users")


def check_password(password: object) -> str:
    """Validate a password: 1 to 1024 characters.

    Raises:
        Invalid: otherwise.
    """
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_CHARS:
        raise Invalid(f"password must be 1-{MAX_PASSWORD_CHARS} characters")
    return password


def presence_audience(user: str, shared: list[str]) -> list[str]:
    """Whose presence ``GET /v1/presence`` lists: the caller and everyone who shares a
    conversation with them, sorted (the caller is listed even with no conversation)."""
    return sorted({user, *shared})


# --- conversations ------------------------------------------------------------------------


def creation_origin(actor: str, title: str, members: tuple[str, ...]) -> str:
    """The fingerprint of a creation: a replay of the same creation has the same one."""
    return hashlib.sha256(orjson.dumps([actor, title, list(members)])).hexdigest()


def check_recreation(stored_origin: str, origin: str, actor_is_member: bool) -> None:
    """Decide on a creation whose id exists: a replay is accepted, anything else refused.

    Raises:
        Conflict: when another creation took the id.
        NotFound: when the creator has left the conversation since.
    """
    if stored_origin != origin:
        raise Conflict("conversation id already taken")
    require_member(actor_is_member)


# --- edits and deletes --------------------------------------------------------------------


def target_message_id(kind: str | None, result_message_id: str | None) -> str:
    """The message an edit or delete names through the op id of its send.

    Args:
        kind: the kind of the recorded target operation (None when never seen).
        result_message_id: the message id in its recorded result.

    Raises:
        NotFound: when the target is not an applied send.
    """
    if kind != "send" or result_message_id is None:
        raise NotFound("no such message")
    return result_message_id


def check_reply_target(found_conversation: str | None, conversation_id: str) -> None:
    """Check the message a reply names: it must be in the same conversation. A deleted
    message may still be replied to (the reply was likely written before the deletion).

    Args:
        found_conversation: the replied-to message's conversation, or None when unknown.
        conversation_id: the reply's conversation.

    Raises:
        NotFound: an unknown message, or one of another conversation (whose existence the
            sender may not know).
    """
    if found_conversation != conversation_id:
        raise NotFound("no such message to reply to")


def check_target(
    found: tuple[str, str, bool] | None, conversation_id: str, user: str, *, editing: bool
) -> None:
    """Check that ``user`` may change a message.

    Args:
        found: the message's ``(conversation_id, sender, deleted)``, or None.
        conversation_id: the conversation the operation names.
        user: who changes it.
        editing: an edit (a deleted message cannot be edited; deleting twice is a no-op).

    Raises:
        NotFound: no such message in that conversation.
        Forbidden: someone else sent it.
        Conflict: an edit of a deleted message.
    """
    if found is None or found[0] != conversation_id:
        raise NotFound("no such message")
    if found[1] != user:
        raise Forbidden("only the sender may change a message")
    if found[2] and editing:
        raise Conflict("the message was deleted")


def read_advances(seq: int, last_seq: int, current: int) -> bool:
    """Whether marking read up to ``seq`` moves the read marker (it never goes back).

    Raises:
        Invalid: ``seq`` is past the conversation's last seq.
    """
    if seq > last_seq:
        raise Invalid(f"seq {seq} is past the conversation's last seq")
    return seq > current


# --- operation results --------------------------------------------------------------------


def applied(
    op_id: str,
    conversation_id: str,
    message_id: str | None,
    seq: int | None,
    pos: int | None,
    ts_ms: int,
) -> OpResult:
    """The result of an applied operation (``seq``/``pos`` None when nothing was logged)."""
    return OpResult(
        op_id=op_id,
        status="applied",
        conversation_id=conversation_id,
        message_id=message_id,
        seq=seq,
        pos=pos,
        ts_ms=ts_ms,
    )


def rejected(op_id: str, error: Rejection) -> OpResult:
    """The result of a refused operation, with the status its code travels with."""
    return OpResult(
        op_id=op_id,
        status="rejected",
        code=error.code,
        reason=error.reason,
        status_code=error.status,
    )


def replayed(original: OpResult, stored_hash: str, payload_hash: str) -> OpResult:
    """The answer to an op id seen before: its original result, or a conflict.

    An applied original comes back as ``duplicate``; a rejection comes back as it was.
    The same op id with another payload is refused (and the refusal is not recorded).
    """
    if stored_hash != payload_hash:
        return rejected(original.op_id, OpIdConflict("op id already used with another payload"))
    if original.status == "applied":
        return attrs.evolve(original, status="duplicate")
    return original


# --- the event log ------------------------------------------------------------------------


def check_cursor(since: int, oldest: int, head: int) -> None:
    """Refuse a cursor the log cannot continue from.

    Args:
        since: the client's cursor.
        oldest: the oldest position the log still serves.
        head: the last position written.

    Raises:
        CursorExpired: (with ``oldest_pos``) older than the retained log, or ahead of the
            head (the server lost its log).
    """
    if since < oldest - 1:
        raise CursorExpired("the cursor is older than the retained event log", oldest_pos=oldest)
    if since > head:
        raise CursorExpired("the cursor is ahead of the server's event log", oldest_pos=oldest)


# --- epochs ---------------------------------------------------------------------------------

#: The ``meta`` keys of the epoch chain: ``epoch:<n, 8 digits>:<epoch id>`` → the head when
#: that epoch began (the values are integers in both storages).
EPOCH_KEY_PREFIX = "epoch:"


def epoch_key(n: int, epoch: str) -> str:
    """The ``meta`` key of the ``n``-th epoch of a log."""
    return f"{EPOCH_KEY_PREFIX}{n:08d}:{epoch}"


def epoch_chain(meta: Mapping[str, int]) -> list[tuple[str, int]]:
    """The epochs a log went through, oldest first, each with the head it began at, from
    the storage's ``meta`` rows (other keys are ignored)."""
    rows = sorted(k for k in meta if k.startswith(EPOCH_KEY_PREFIX))
    return [(k.split(":", 2)[2], int(meta[k])) for k in rows]


def check_epoch(client_epoch: str | None, since: int, chain: Sequence[tuple[str, int]]) -> None:
    """Refuse a cursor that does not continue this log (issue 12: a restored server).

    The epoch is a random id per run of the log: a new one begins each time the storage is
    opened (a restart, or a data directory put back from a backup), recorded in the log
    itself with the head it began at. A cursor continues this log when its epoch is one this
    log went through and it is not past the head at which that epoch ended: then every event
    the client saw is still in the log. An epoch the log never had (the client saw a run the
    restored copy does not contain), or a cursor past its epoch's end (events the restore
    lost), is a discontinuity: ``410`` and the client resyncs.

    Args:
        client_epoch: the epoch the client's cursor belongs to (None or "": not checked).
        since: the client's cursor.
        chain: :func:`epoch_chain`.

    Raises:
        CursorExpired: the cursor does not continue this log.
    """
    if not client_epoch or not chain:
        return
    for i, (epoch, _start) in enumerate(chain):
        if epoch != client_epoch:
            continue
        if i + 1 < len(chain) and since > chain[i + 1][1]:
            break
        return
    raise CursorExpired("the server's event log was restored or replaced (another epoch)")


def scan_end(since: int, head: int) -> int:
    """The last position one pull scans: bounded, so a user who sees little of a busy log
    gets an empty page with a ``next`` that moves on instead of a scan of the whole log."""
    return min(head, since + PULL_SCAN_MAX)


def page_end(positions: list[int], limit: int, end: int, head: int) -> tuple[int, bool]:
    """The ``next`` cursor and ``has_more`` of a page.

    Args:
        positions: the positions found after ``since`` (at most ``limit + 1``).
        limit: the page size.
        end: the last position scanned.
        head: the last position written.
    """
    if len(positions) > limit:
        return positions[limit - 1], True
    return end, end < head


def page_cut(sizes: Sequence[int], budget: int) -> int:
    """How many of a page's first items fit in ``budget`` bytes, separators included.

    A page always keeps its first item, whatever its size: one event alone always fits a
    client's limit, and a page that kept nothing would never move the cursor.

    Args:
        sizes: the encoded size of each item, in page order.
        budget: the page's byte budget (``ServerConfig.page_bytes``).
    """
    total = -1  # n items take n - 1 commas
    for kept, size in enumerate(sizes):
        total += size + 1
        if total > budget and kept > 0:
            return kept
    return len(sizes)


def history_cut(sizes: Sequence[int], budget: int) -> int:
    """How many of a history page's *newest* messages fit in ``budget`` bytes.

    A history page is oldest first and continues backwards (``before`` its first message),
    so a page cut for size keeps its newest messages; the client asks for the older ones
    next. At least one message is always kept.
    """
    return page_cut(sizes[::-1], budget)


def check_query_int(name: str, raw: str | None, default: int | None, minimum: int) -> int | None:
    """Read an integer query parameter, capped past any position or seq there is.

    Raises:
        BadRequest: not an integer, or under ``minimum``.
    """
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return min(value, MAX_QUERY_INT)


# --- rate limits and passwords ------------------------------------------------------------


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

    def wait(self, now: float) -> float:
        """The seconds until a token is available at ``now`` (0.0: one is), taking none."""
        tokens = self.tokens
        if self.updated is not None:
            tokens = min(self.burst, tokens + (now - self.updated) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


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

    def wait(self, key: str, now: float) -> float:
        """The seconds until ``key`` may take a token (0.0: now), taking none.

        For limits that count only some outcomes (failed logins): check before the work,
        :meth:`take` once the outcome is known.
        """
        bucket = self.buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)

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


def rate_budget(method: str, path: str) -> str:
    """The budget a REST request draws a token from: ``"pull"`` or ``"rest"``.

    A catch-up is a run of ``GET /v1/events`` pages, one after another as fast as the
    client applies them; drawn from the abuse limit shared with every other request
    (50/s by default), it would cap a catch-up at 50 pages a second. Pulls therefore
    draw from a budget of their own, sized for catch-ups (``--pull-rate``,
    ``--pull-burst``), and never empty the budget that writes and the other reads share.

    Args:
        method: the HTTP method.
        path: the request's path.
    """
    return "pull" if method == "GET" and path == "/v1/events" else "rest"
def address_key(host: str | None) -> str:
    """The key under which a client address is limited: the address itself for IPv4, its
    /64 network for IPv6 (one host commonly holds a whole /64)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def login_keys(address: str, user: str) -> tuple[str, str]:
    """The keys of the failed-login limits: per address, and per (address, user name).

    There is no limit of failures per user name alone: then anyone could lock a victim out
    by hammering wrong passwords for their name. A victim logs in from an address of their
    own, whose buckets the attacker cannot drain.
    """
    return address, f"{address} {user}"


def retry_after_ms(wait_s: float) -> int:
    """A wait in seconds as whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s * 1000))


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
