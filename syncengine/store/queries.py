"""Read queries: what the application sees (conversations, messages, pages, presence, typing)
and the sync-health report.

Every function takes a connection inside a read (or write) transaction of its caller, so
a query made of several statements answers from one snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from syncengine.errors import NotFound, UsageError
from syncengine.models import (
    ConnectionState,
    Conversation,
    Message,
    MessageState,
    Presence,
    PresenceStatus,
    SyncHealth,
    Typing,
)

__all__ = ["STREAM"]

#: The one event stream whose position the ``cursors`` table keeps.
STREAM = "events"

_MESSAGE_COLUMNS = """
    m.conversation_id, m.op_id, m.id, m.seq, m.sender,
    CASE WHEN p.deleted = 1 THEN '' WHEN p.body IS NOT NULL THEN p.body ELSE m.body END,
    m.state, m.created_at, p.edited_at, COALESCE(p.deleted, 0), m.reply_to
"""
_FROM_MESSAGES = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages m LEFT JOIN message_patches p ON p.message_id = m.id "
)
# Built once: a history page is a hot read (the app scrolls).
_NEWEST = _FROM_MESSAGES + (
    "WHERE m.conversation_id = ? AND m.seq IS NOT NULL ORDER BY m.seq DESC LIMIT ?"
)
_ECHOES = _FROM_MESSAGES + "WHERE m.conversation_id = ? AND m.seq IS NULL ORDER BY m.local_id"
_BEFORE = _FROM_MESSAGES + "WHERE m.conversation_id = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?"
_BY_OP = _FROM_MESSAGES + "WHERE m.sender = ? AND m.op_id = ?"
_BY_ID = _FROM_MESSAGES + "WHERE m.id = ?"

# A dict lookup, not ``MessageState(value)``: an Enum call costs as much as the rest of a
# row's conversion, and a history page converts 50 rows.
_MESSAGE_STATES: dict[str, MessageState] = {s.value: s for s in MessageState}


# A history page builds 50 rows: through the frozen attrs ``__init__`` a ``Message`` took
# 1.9 µs, about a third of the page's time, so its slots are filled directly (the class has
# no validators, converters or post-init, so the object is the same). A test compares the
# two constructions field by field.
_new_message = object.__new__
_set = {f.name: getattr(Message, f.name).__set__ for f in attrs.fields(Message)}
_set_conversation_id, _set_op_id, _set_id = _set["conversation_id"], _set["op_id"], _set["id"]
_set_seq, _set_sender, _set_body = _set["seq"], _set["sender"], _set["body"]
_set_state, _set_created_at = _set["state"], _set["created_at"]
_set_edited_at, _set_deleted = _set["edited_at"], _set["deleted"]
_set_reply_to = _set["reply_to"]
# Fields the row does not carry keep their defaults (a factory is called for each row).
_DEFAULTS = [
    (_set[f.name], f.default)
    for f in attrs.fields(Message)
    if f.name not in {"conversation_id", "op_id", "id", "seq", "sender", "body", "state",
                      "created_at", "edited_at", "deleted", "reply_to"}
]  # fmt: skip


def _message(row: Sequence[Any]) -> Message:
    m = _new_message(Message)
    _set_conversation_id(m, row[0])
    _set_op_id(m, row[1])
    _set_id(m, row[2])
    _set_seq(m, row[3])
    _set_sender(m, row[4])
    _set_body(m, row[5])
    _set_state(m, _MESSAGE_STATES.get(row[6]) or MessageState(row[6]))
    _set_created_at(m, row[7])
    _set_edited_at(m, row[8])
    _set_deleted(m, bool(row[9]))
    _set_reply_to(m, row[10])
    for setter, default in _DEFAULTS:
        setter(m, default.factory() if isinstance(default, attrs.Factory) else default)
    return m


def get_meta(c: Any, key: str) -> str | None:
    """A value of the ``meta`` table, or None."""
    row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def read_cursor(c: Any) -> int | str:
    """The persisted stream position (0 before the first pull)."""
    row = c.execute("SELECT pos, token FROM cursors WHERE stream = ?", (STREAM,)).fetchone()
    if row is None:
        return 0
    # An opaque token (Matrix) lives in its own TEXT column (migration 0002).
    return str(row[1]) if row[1] is not None else int(row[0])


def known_seqs(c: Any, me: str) -> dict[str, int]:
    """The highest stored seq of each conversation listed by :func:`conversations` (those
    with a seq), without its unread count: a session starts with this (gap detection), and
    counting unread over every stored message there cost 0.2 s a start at 200,000 messages."""
    rows = c.execute(
        """
        SELECT c.id, c.last_seq FROM conversations c
        WHERE c.last_seq > 0 AND (c.pending = 1 OR EXISTS (
            SELECT 1 FROM members mb WHERE mb.conversation_id = c.id AND mb.user = ?))
        """,
        (me,),
    )
    return {cid: int(seq) for cid, seq in rows}


def conversations(c: Any, me: str) -> list[Conversation]:
    """The conversations ``me`` is a member of (or created offline), newest activity first."""
    rows = c.execute(
        """
        SELECT c.id, c.title, c.members, c.last_seq, c.read_seq, c.pending,
          (SELECT COUNT(*) FROM messages m
             LEFT JOIN message_patches p ON p.message_id = m.id
            WHERE m.conversation_id = c.id AND m.seq > c.read_seq
              AND m.sender != ? AND COALESCE(p.deleted, 0) = 0) AS unread
        FROM conversations c
        WHERE c.pending = 1 OR EXISTS (
            SELECT 1 FROM members mb WHERE mb.conversation_id = c.id AND mb.user = ?)
        ORDER BY c.last_seq DESC, c.created_at DESC, c.id
        """,
        (me, me),
    ).fetchall()
    return [
        Conversation(
            id=r[0],
            title=r[1],
            members=tuple(orjson.loads(r[2])),
            last_seq=r[3],
            read_seq=r[4],
            pending=bool(r[5]),
            unread=r[6],
        )
        for r in rows
    ]


def conversation(c: Any, me: str, conversation_id: str) -> Conversation:
    """One of :func:`conversations`.

    Raises:
        NotFound: not in the store, or ``me`` is no longer a member.
    """
    for conv in conversations(c, me):
        if conv.id == conversation_id:
            return conv
    raise NotFound(f"no conversation {conversation_id} in the store")


def has_conversation(c: Any, conversation_id: str) -> bool:
    """Whether the conversation is in the store at all (member or not)."""
    row = c.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    return row is not None


def messages(
    c: Any, conversation_id: str, before: int | None, limit: int, me: str = ""
) -> list[Message]:
    """A page of messages, oldest first (see ``Store.messages``); ``me``'s own messages carry
    who has read them.

    Raises:
        UsageError: ``limit`` is below 1.
    """
    _check_limit(limit)
    if before is None:
        rows = c.execute(_NEWEST, (conversation_id, limit)).fetchall()
        echoes = c.execute(_ECHOES, (conversation_id,)).fetchall()
    else:
        rows = c.execute(_BEFORE, (conversation_id, before, limit)).fetchall()
        echoes = []
    found = [_message(r) for r in reversed(rows)] + [_message(r) for r in echoes]
    return _with_read_by(c, me, conversation_id, _with_reactions(c, conversation_id, found))


def _with_read_by(c: Any, me: str, conversation_id: str, found: list[Message]) -> list[Message]:
    """``me``'s sent messages with the other users whose read position reached them."""
    if not me:
        return found
    reads = c.execute(
        "SELECT user, read_seq FROM reads WHERE conversation_id = ? AND user != ? ORDER BY user",
        (conversation_id, me),
    ).fetchall()
    if not reads:
        return found
    return [
        attrs.evolve(m, read_by=tuple(u for u, seq in reads if seq >= m.seq))
        if m.sender == me and m.seq is not None
        else m
        for m in found
    ]


def _with_reactions(c: Any, conversation_id: str, found: list[Message]) -> list[Message]:
    """The messages with their reactions (one query for the conversation)."""
    rows = c.execute(
        "SELECT r.message_id, r.emoji, r.user FROM reactions r JOIN messages m ON m.id = "
        "r.message_id WHERE m.conversation_id = ? ORDER BY r.message_id, r.emoji, r.user",
        (conversation_id,),
    ).fetchall()
    if not rows:
        return found
    by_message: dict[str, dict[str, list[str]]] = {}
    for message_id, emoji, user in rows:
        by_message.setdefault(message_id, {}).setdefault(emoji, []).append(user)
    return [
        attrs.evolve(m, reactions={e: tuple(u) for e, u in by_message[m.id].items()})
        if m.id in by_message
        else m
        for m in found
    ]


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise UsageError("limit must be at least 1")


def page(
    c: Any, conversation_id: str, before: int | None, limit: int, me: str = ""
) -> tuple[list[Message], int | None, bool]:
    """``(messages, lowest stored seq, history complete)`` from one snapshot.

    Raises:
        UsageError: ``limit`` is below 1.
        NotFound: the conversation is not in the store.
    """
    _check_limit(limit)
    if not has_conversation(c, conversation_id):
        raise NotFound(f"no conversation {conversation_id} in the store")
    found = messages(c, conversation_id, before, limit, me)
    lowest = lowest_seq(c, conversation_id)
    complete = get_meta(c, f"eoh:{conversation_id}") == "1"
    return found, lowest, complete


def message_by_op(c: Any, me: str, op_id: str) -> Message | None:
    """``me``'s message created by send operation ``op_id`` (echo or server copy)."""
    row = c.execute(_BY_OP, (me, op_id)).fetchone()
    if row is None:
        return None
    return _with_read_by(c, me, row[0], _with_reactions(c, row[0], [_message(row)]))[0]


def message_by_id(c: Any, message_id: str) -> Message | None:
    """The stored message with server id ``message_id``, or None."""
    row = c.execute(_BY_ID, (message_id,)).fetchone()
    return _with_reactions(c, row[0], [_message(row)])[0] if row else None


def message_count(c: Any, conversation_id: str | None) -> int:
    """Messages stored, in one conversation or in all."""
    if conversation_id is None:
        return int(c.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    return int(
        c.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()[0]
    )


def lowest_seq(c: Any, conversation_id: str) -> int | None:
    """The smallest server seq stored for a conversation (None if none)."""
    row = c.execute(
        "SELECT MIN(seq) FROM messages WHERE conversation_id = ?", (conversation_id,)
    ).fetchone()
    return row[0] if row else None


def typing(c: Any, conversation_id: str, me: str, now: float) -> list[Typing]:
    """Who is typing in a conversation at ``now`` (expired rows hidden, ``me`` excluded)."""
    rows = c.execute(
        "SELECT user, expires_at FROM typing WHERE conversation_id = ? "
        "AND expires_at > ? AND user != ? ORDER BY user",
        (conversation_id, now, me),
    ).fetchall()
    return [Typing(user=u, conversation_id=conversation_id, expires_at=e) for u, e in rows]


def _presence(row: Sequence[Any]) -> Presence:
    return Presence(user=row[0], status=PresenceStatus(row[1]), last_seen=row[2])


def presence_of(c: Any, user: str) -> Presence | None:
    """A user's last known presence, or None if never seen."""
    row = c.execute(
        "SELECT user, status, last_seen FROM presence WHERE user = ?", (user,)
    ).fetchone()
    return _presence(row) if row else None


def presence_all(c: Any) -> list[Presence]:
    """Every known presence, by user name."""
    rows = c.execute("SELECT user, status, last_seen FROM presence ORDER BY user").fetchall()
    return [_presence(r) for r in rows]


def quarantined(c: Any) -> list[dict[str, Any]]:
    """Quarantined (poison) events, oldest first."""
    rows = c.execute("SELECT pos, raw, error, at FROM quarantine ORDER BY id").fetchall()
    return [{"pos": r[0], "raw": r[1], "error": r[2], "at": r[3]} for r in rows]


def health(c: Any, now: float, open_gaps: int | None) -> SyncHealth:
    """The sync-health report, derived from what the file holds.

    Status derived from the store, never from a flag set optimistically, cannot say "synced"
    while uploads are pending. Open gaps are known only to the syncing process (its sync
    protocol detects them): it passes ``open_gaps``; any other reader gets 0 there, and the
    copy the syncing process records (``gaps``, ``lag``, ``mode``...) in ``meta``.
    """
    counts = dict(c.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
    oldest = c.execute(
        "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'sending')"
    ).fetchone()[0]
    meta = dict(
        c.execute(
            "SELECT key, value FROM meta WHERE key IN ('state', 'last_sync_at', 'mode', "
            "'open_gaps', 'server_head', 'last_error', 'next_retry_at')"
        ).fetchall()
    )
    cursor = read_cursor(c)
    gaps = int(meta["open_gaps"]) if (meta.get("open_gaps") or "").isdigit() else 0
    head = meta.get("server_head") or ""
    lag = max(0, int(head) - cursor) if head.isdigit() and type(cursor) is int else 0
    n_conv = c.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
    n_msg = c.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    return SyncHealth(
        state=ConnectionState(meta.get("state") or ConnectionState.OFFLINE.value),
        pending=counts.get("pending", 0),
        sending=counts.get("sending", 0),
        failed=counts.get("failed", 0),
        oldest_pending_age_s=(now - oldest) if oldest is not None else None,
        cursor=cursor,
        last_sync_at=float(meta["last_sync_at"]) if meta.get("last_sync_at") else None,
        open_gaps=open_gaps or 0,
        conversations=n_conv,
        messages=n_msg,
        lag=lag,
        gaps=gaps,
        last_error=_json_or_none(meta.get("last_error")),
        next_retry_at=float(meta["next_retry_at"]) if meta.get("next_retry_at") else None,
        mode=meta.get("mode") or "offline",
    )


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except ValueError:
        return None
