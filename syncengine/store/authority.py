"""The server's copy taking over the store's: a resync page, a re-fetched message after a
rejected operation, a conversation the user was removed from.

Unlike :mod:`syncengine.store.apply` (events merge in any order, older ones lose), these
writes make a range of a conversation exactly what the server showed: messages the server no
longer has in that range are dropped, a message at a reused seq replaces the stored one, the
current body and deletion overwrite whatever edit the store held. Only the local effect of an
operation still waiting in the outbox (an edit or delete not yet acknowledged) is kept: its
own acknowledgement or rejection settles it.

Every function takes a connection inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from syncengine.store.apply import OTHER_SEND_SQL

__all__ = ["lowest_seqs", "message_seq", "remove_conversation", "replace_range"]


def _unsettled_targets(c: Any, cid: str) -> set[str]:
    """Message ids an unacknowledged edit or delete of ``cid`` targets."""
    rows = c.execute(
        "SELECT payload FROM outbox WHERE conversation_id = ? AND kind IN ('edit', 'delete') "
        "AND state IN ('pending', 'sending')",
        (cid,),
    ).fetchall()
    out: set[str] = set()
    for (payload,) in rows:
        mid = orjson.loads(payload).get("message_id")
        if mid:
            out.add(mid)
    return out


def replace_range(
    c: Any,
    cid: str,
    messages: Sequence[Any],
    low: int,
    high: int | None,
    *,
    last_seq: int | None = None,
    drop_below: int | None = None,
) -> None:
    """Make seqs ``low..high`` (``high`` None: everything above ``low``) of ``cid`` equal
    ``messages`` (``wire.HistoryMessage``, the server's current state of that range).

    Messages without a seq (a Matrix transport numbers nothing) cannot name a range: they
    are merged as history instead (:func:`syncengine.store.apply.history_events`).
    """
    if any(m.seq is None for m in messages):
        return
    ids = [m.message_id for m in messages]
    span = "seq >= ?" + ("" if high is None else " AND seq <= ?")
    args: list[Any] = [cid, low] + ([] if high is None else [high])
    c.execute("CREATE TEMP TABLE IF NOT EXISTS keep_ids(id TEXT PRIMARY KEY) WITHOUT ROWID")
    c.execute("DELETE FROM keep_ids")
    c.executemany("INSERT OR IGNORE INTO keep_ids(id) VALUES (?)", [(i,) for i in ids])
    where = f"conversation_id = ? AND seq IS NOT NULL AND {span} AND id NOT IN keep_ids"
    if drop_below is not None:
        where = f"({where}) OR (conversation_id = ? AND seq IS NOT NULL AND seq < ?)"
        args += [cid, drop_below]
    c.execute(
        f"DELETE FROM message_patches WHERE message_id IN (SELECT id FROM messages WHERE {where})",
        args,
    )
    c.execute(f"DELETE FROM messages WHERE {where}", args)
    c.execute(
        "INSERT INTO conversations(id, created_at) VALUES (?, 0) ON CONFLICT(id) DO NOTHING",
        (cid,),
    )
    unsettled = _unsettled_targets(c, cid)
    for m in messages:
        _put_message(c, m, unsettled, last_seq or 0)
    if high is None:
        top = max([m.seq for m in messages if m.seq is not None] + [last_seq or 0, 0])
        c.execute("UPDATE conversations SET last_seq = ? WHERE id = ?", (top, cid))
    c.execute("DELETE FROM keep_ids")


def _put_message(c: Any, m: Any, unsettled: set[str], edit_seq: int) -> None:
    created = m.ts_ms / 1000
    # An own send still echoed locally becomes this server copy (one row, G4).
    if m.op_id is not None:
        other = c.execute(OTHER_SEND_SQL, (m.op_id, m.body)).fetchone() is not None
        if not other:
            c.execute(
                "UPDATE messages SET id = ?, seq = ?, state = 'sent', created_at = ? "
                "WHERE sender = ? AND op_id = ? AND id IS NULL",
                (m.message_id, m.seq, created, m.sender, m.op_id),
            )
            c.execute(
                "UPDATE outbox SET state = 'sent' WHERE op_id = ? AND kind = 'send' "
                "AND state IN ('pending', 'sending')",
                (m.op_id,),
            )
        # The same op id held by another server copy (a message the server forgot, at
        # another id) gives way to the server's.
        c.execute(
            "DELETE FROM messages WHERE sender = ? AND op_id = ? AND id IS NOT NULL AND id != ?",
            (m.sender, m.op_id, m.message_id),
        )
    c.execute(
        "INSERT INTO messages(conversation_id, seq, id, op_id, sender, body, state, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 'sent', ?) ON CONFLICT(id) DO UPDATE SET "
        "seq = excluded.seq, conversation_id = excluded.conversation_id, "
        "op_id = excluded.op_id, sender = excluded.sender, state = 'sent'",
        (m.conversation_id, m.seq, m.message_id, m.op_id, m.sender, m.body, created),
    )
    if m.message_id in unsettled:
        return
    if m.deleted:
        c.execute(
            "INSERT INTO message_patches(message_id, deleted, edit_seq) VALUES (?, 1, ?) "
            "ON CONFLICT(message_id) DO UPDATE SET deleted = 1, "
            "edit_seq = MAX(edit_seq, excluded.edit_seq)",
            (m.message_id, edit_seq),
        )
    elif m.edited_ms is not None:
        c.execute(
            "INSERT INTO message_patches(message_id, body, edit_seq, edited_at, deleted) "
            "VALUES (?, ?, ?, ?, 0) ON CONFLICT(message_id) DO UPDATE SET "
            "body = excluded.body, edited_at = excluded.edited_at, deleted = 0, "
            "edit_seq = MAX(edit_seq, excluded.edit_seq)",
            (m.message_id, m.body, edit_seq, m.edited_ms / 1000),
        )
    else:
        # Neither edited nor deleted on the server: the original body stands.
        c.execute("UPDATE messages SET body = ? WHERE id = ?", (m.body, m.message_id))
        c.execute("DELETE FROM message_patches WHERE message_id = ?", (m.message_id,))


def remove_conversation(c: Any, cid: str) -> None:
    """Forget a conversation the user is no longer a member of (its messages too)."""
    c.execute(
        "DELETE FROM message_patches WHERE message_id IN "
        "(SELECT id FROM messages WHERE conversation_id = ?)",
        (cid,),
    )
    for table in ("messages", "members", "reads", "typing"):
        c.execute(f"DELETE FROM {table} WHERE conversation_id = ?", (cid,))
    c.execute("DELETE FROM conversations WHERE id = ?", (cid,))
    c.execute("DELETE FROM meta WHERE key = ?", (f"eoh:{cid}",))


def message_seq(c: Any, message_id: str) -> int | None:
    """The seq of a stored server message, or None."""
    row = c.execute("SELECT seq FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else row[0]


def lowest_seqs(c: Any) -> dict[str, int]:
    """The lowest stored seq of every conversation that holds server messages."""
    return {
        cid: seq
        for cid, seq in c.execute(
            "SELECT conversation_id, MIN(seq) FROM messages WHERE seq IS NOT NULL "
            "GROUP BY conversation_id"
        ).fetchall()
    }
