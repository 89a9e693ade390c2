"""The outbox: operations queued durably (G1) and their moves through :class:`OutboxState`.

Rules of this file:

- Every state move is checked against ``OUTBOX_TRANSITIONS`` in ``syncengine/core/sync.py``
  (imported, never copied). The moves each function's SQL makes are named below and checked
  when this module is imported; a move asked of one named item (:func:`mark_failed`,
  :func:`mark_sent_in`, :func:`requeue`) is checked against the item's stored state and
  refused with :class:`IllegalOutboxMove` before anything is written.
- Rewriting a row in the state it is already in is not a move: a replayed acknowledgement
  (SENT stays SENT) or a claim after the lease ran out (SENDING stays SENDING).
- Moves asked of many rows whose outcome the live channel may have settled meanwhile
  (:func:`mark_retry`, :func:`recover_sending`, the echo confirmation in ``apply.py``) name
  their source state in SQL, so rows in any other state are left alone.
- Every function takes a connection inside the transaction its caller opened (the ``Store``
  facade): the transaction boundaries are all visible in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import orjson

from syncengine.core.cancel import cancel_refusal
from syncengine.core.sync import OUTBOX_TRANSITIONS
from syncengine.errors import NotFound, UsageError
from syncengine.models import OpKind, OutboxItem, OutboxState, new_id
from syncengine.protocol.ops import check_text as _check_text
from syncengine.protocol.ops import validate_op as _validate
from syncengine.wire import OpResult

__all__ = [
    "SENDING_LEASE_S",
    "IllegalOutboxMove",
    "check_move",
    "sources",
]

#: How long a claimed (SENDING) item is left alone before another claim may take it again:
#: the process that claimed it is presumed dead.
SENDING_LEASE_S = 60.0

PENDING, SENDING, SENT, FAILED = (
    OutboxState.PENDING,
    OutboxState.SENDING,
    OutboxState.SENT,
    OutboxState.FAILED,
)

OUTBOX_COLUMNS = (
    "op_id, kind, conversation_id, payload, state, attempts, next_attempt_at, last_error, "
    "created_at"
)


class IllegalOutboxMove(UsageError):
    """An outbox item was asked to make a move ``OUTBOX_TRANSITIONS`` does not allow.

    Nothing was written. It is a :class:`~syncengine.errors.UsageError`: the caller asked for
    the move (like h11's ``LocalProtocolError``), the store itself is sound.

    Attributes:
        op_id: the item's operation id (empty when no item is involved).
        old: the state the item is in.
        new: the state it was asked to move to.
    """

    def __init__(
        self, op_id: str, old: OutboxState, new: OutboxState, message: str | None = None
    ) -> None:
        self.op_id = op_id
        self.old = old
        self.new = new
        super().__init__(message or f"operation {op_id} cannot move {old.value} -> {new.value}")


def check_move(old: OutboxState | str, new: OutboxState | str, op_id: str = "") -> str:
    """The reason ``old -> new`` is allowed, from ``OUTBOX_TRANSITIONS``.

    Raises:
        IllegalOutboxMove: the table has no such move.
    """
    old, new = OutboxState(old), OutboxState(new)
    try:
        return OUTBOX_TRANSITIONS[(old, new)]
    except KeyError:
        raise IllegalOutboxMove(op_id, old, new) from None


def sources(new: OutboxState) -> tuple[OutboxState, ...]:
    """The states the table allows to move to ``new``, in table order."""
    return tuple(old for (old, to) in OUTBOX_TRANSITIONS if to is new)


def _sql_states(states: Iterable[OutboxState]) -> str:
    return ", ".join(f"'{s.value}'" for s in states)


#: The fixed moves the SQL below makes (its source state is written in the statement).
FIXED_MOVES = (
    (PENDING, SENDING),  # claim
    (SENDING, PENDING),  # mark_retry, recover_sending
    (FAILED, PENDING),  # requeue
)
# Checked against the table at import: a table that drops one of them fails loudly here
# instead of letting the SQL move rows it forbids.
for _move in FIXED_MOVES:
    check_move(*_move)

#: States an item may be confirmed SENT from by its server copy (the echo): SQL text.
ECHO_SOURCES_SQL = _sql_states(sources(SENT))

#: The outbox holds a send of this op id (parameters: op id, body) with another body.
OTHER_SEND_SQL = (
    "SELECT 1 FROM outbox o WHERE o.op_id = ? AND o.kind = 'send' "
    "AND json_extract(o.payload, '$.body') IS NOT ?"
)


def confirm_by_echo(c: Any, sends: Sequence[tuple[str, str]], now: float) -> list[str]:
    """The server's copies of own sends (op id, body) confirm their outbox items: each one
    moves to SENT from the states the transition table allows (never from FAILED), unless
    the outbox holds another body under that op id (another device's refused reuse of it).

    Returns the op ids this call moved, in order: the echo came before the acknowledgement,
    which will find them SENT and report nothing, so the caller reports these sends. One
    statement per send to read its row count; own sends are few in any page.
    """
    moved: list[str] = []
    for op_id, body in sends:
        if c.execute(
            "UPDATE outbox SET state = 'sent', updated_at = ? "
            f"WHERE op_id = ? AND state IN ({ECHO_SOURCES_SQL}) AND NOT EXISTS ({OTHER_SEND_SQL})",
            (now, op_id, op_id, body),
        ).rowcount:
            moved.append(op_id)
    return moved


def outbox_item(row: Sequence[Any]) -> OutboxItem:
    """An :class:`OutboxItem` from a row of :data:`OUTBOX_COLUMNS`."""
    return OutboxItem(
        op_id=row[0],
        kind=OpKind(row[1]),
        conversation_id=row[2],
        payload=orjson.loads(row[3]),
        state=OutboxState(row[4]),
        attempts=row[5],
        next_attempt_at=row[6],
        last_error=row[7],
        created_at=row[8],
    )


# --- enqueue (G1) ------------------------------------------------------------------------------


def prepare(
    kind: OpKind | str,
    conversation_id: str,
    payload: Mapping[str, Any] | None,
    op_id: str | None,
    clock: Callable[[], float],
) -> tuple[OpKind, dict[str, Any], str]:
    """Check an operation before the transaction: ``(kind, payload copy, op id)``.

    Without ``op_id`` a new time-ordered one is made from ``clock``.

    Raises:
        UsageError: an unknown kind or an invalid payload or id.
    """
    try:
        kind = OpKind(kind)
    except ValueError:
        raise UsageError(
            f"unknown operation kind {kind!r}; expected one of {', '.join(k.value for k in OpKind)}"
        ) from None
    if payload is not None and not isinstance(payload, Mapping):
        raise UsageError("payload must be a mapping of field names to values")
    body = dict(payload or {})
    if op_id is not None and not isinstance(op_id, str):
        raise UsageError("op_id must be a string")
    op_id = op_id or new_id(clock())
    _check_text(op_id, "op_id")
    _validate(kind, conversation_id, body)
    return kind, body, op_id


def enqueue(
    c: Any, me: str, kind: OpKind, cid: str, payload: dict[str, Any], op_id: str, now: float
) -> tuple[OutboxItem, bool]:
    """Insert the outbox row and its local effect; an op id already taken returns its item."""
    row = c.execute(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
    if row is not None:
        return outbox_item(row), False
    if kind is OpKind.SEND:
        sent = c.execute(
            "SELECT conversation_id, created_at FROM messages "
            "WHERE sender = ? AND op_id = ? AND id IS NOT NULL",
            (me, op_id),
        ).fetchone()
        if sent is not None:
            # Sent long ago and its outbox row pruned: the op id is still taken (a second
            # echo would collide with the server copy), and the send is done.
            done = OutboxItem(
                op_id=op_id,
                kind=kind,
                conversation_id=sent[0],
                payload=payload,
                state=SENT,
                created_at=sent[1],
            )
            return done, False
    local_effect(c, me, kind, cid, payload, op_id, now)
    c.execute(
        "INSERT INTO outbox(op_id, kind, conversation_id, payload, state, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        (op_id, kind.value, cid, orjson.dumps(payload).decode(), now, now),
    )
    item = OutboxItem(
        op_id=op_id, kind=kind, conversation_id=cid, payload=payload, state=PENDING, created_at=now
    )
    return item, True


def local_effect(
    c: Any, me: str, kind: OpKind, cid: str, payload: dict[str, Any], op_id: str, now: float
) -> None:
    """Show an operation's effect at once (echo, patch, read position, pending conversation)."""
    if kind is OpKind.CREATE_CONVERSATION:
        members = sorted({*payload.get("members", []), me})
        payload["members"] = members
        c.execute(
            "INSERT INTO conversations(id, title, members, pending, created_at) "
            "VALUES (?, ?, ?, 1, ?) ON CONFLICT(id) DO NOTHING",
            (cid, payload["title"], orjson.dumps(members).decode(), now),
        )
        c.executemany(
            "INSERT INTO members(conversation_id, user) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(cid, m) for m in members],
        )
        return
    if c.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone() is None:
        raise NotFound(f"no conversation {cid} in the store")
    if kind is OpKind.SEND:
        reply_to = payload.get("reply_to") or payload.get("reply_to_op_id")
        c.execute(
            "INSERT INTO messages(conversation_id, op_id, sender, body, state, created_at, "
            "reply_to) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            (cid, op_id, me, payload["body"], now, reply_to),
        )
    elif kind in (OpKind.EDIT, OpKind.DELETE):
        _patch_target(c, me, kind, cid, payload, now)
    elif kind is OpKind.REACT:
        _react_locally(c, me, cid, payload)
    elif kind is OpKind.MARK_READ:
        c.execute(
            "UPDATE conversations SET read_seq = MAX(read_seq, ?) WHERE id = ?",
            (payload["seq"], cid),
        )


def _react_locally(c: Any, me: str, cid: str, payload: dict[str, Any]) -> None:
    """Show one's reaction at once. Only a sent message (a server id) takes reactions: the
    server's event names it by that id, and the two must meet in one row of the set."""
    found = c.execute(
        "SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?",
        (payload["message_id"], cid),
    ).fetchone()
    if found is None:
        raise NotFound("no such sent message in this conversation (react once it is sent)")
    key = (payload["message_id"], payload["emoji"], me)
    if payload.get("remove"):
        c.execute("DELETE FROM reactions WHERE message_id = ? AND emoji = ? AND user = ?", key)
    else:
        c.execute(
            "INSERT INTO reactions(message_id, emoji, user) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            key,
        )


def _patch_target(
    c: Any, me: str, kind: OpKind, cid: str, payload: dict[str, Any], now: float
) -> None:
    target = _resolve_target(c, me, cid, payload)
    if target["id"] is None:
        # Still a local echo: change it in place; the server applies the op after the send
        # (FIFO per conversation), referring to it by target_op_id.
        body = payload["body"] if kind is OpKind.EDIT else ""
        c.execute("UPDATE messages SET body = ? WHERE local_id = ?", (body, target["local_id"]))
        payload.pop("message_id", None)
        payload["target_op_id"] = target["op_id"]
        return
    payload.pop("target_op_id", None)
    payload["message_id"] = target["id"]
    if kind is OpKind.EDIT:
        c.execute(
            "INSERT INTO message_patches(message_id, body, edited_at) "
            "VALUES (?, ?, ?) ON CONFLICT(message_id) DO UPDATE SET "
            "body = excluded.body, edited_at = excluded.edited_at",
            (target["id"], payload["body"], now),
        )
    else:
        c.execute(
            "INSERT INTO message_patches(message_id, deleted) VALUES (?, 1) "
            "ON CONFLICT(message_id) DO UPDATE SET deleted = 1",
            (target["id"],),
        )


def _resolve_target(c: Any, me: str, cid: str, payload: dict[str, Any]) -> dict[str, Any]:
    if payload.get("message_id"):
        row = c.execute(
            "SELECT local_id, id, op_id, sender FROM messages WHERE id = ? AND conversation_id = ?",
            (payload["message_id"], cid),
        ).fetchone()
    else:
        row = c.execute(
            "SELECT local_id, id, op_id, sender FROM messages "
            "WHERE op_id = ? AND sender = ? AND conversation_id = ?",
            (payload.get("target_op_id"), me, cid),
        ).fetchone()
    if row is None:
        raise NotFound("no such message in this conversation")
    return {"local_id": row[0], "id": row[1], "op_id": row[2], "sender": row[3]}


# --- the push side -------------------------------------------------------------------------------


def claim(c: Any, limit: int, now: float) -> list[OutboxItem]:
    """Mark up to ``limit`` items SENDING, FIFO per conversation (see ``Store.claim``)."""
    lease_cutoff = now - SENDING_LEASE_S
    # Stepped lazily, not fetched whole: a long outbox is read only as far as the batch needs
    # (a 10k backlog was read 20 times over to push it).
    rows = c.execute(
        f"SELECT n, {OUTBOX_COLUMNS}, claimed_at, updated_at FROM outbox "
        "WHERE state IN ('pending', 'sending') ORDER BY n"
    )
    blocked: set[str] = set()
    chosen: list[tuple[Any, ...]] = []
    for row in rows:
        cid = row[3]
        if cid in blocked:
            continue
        state, next_at, claimed_at, updated_at = row[5], row[7], row[10], row[11]
        # A retry scheduled "after now" by a clock that has since been set back (an NTP
        # step, a user fixing the date) is due now, not hours or days later.
        due = next_at is None or next_at <= now or updated_at > now
        ready = (state == "pending" and due) or (
            state == "sending" and (claimed_at or 0) <= lease_cutoff
        )
        if not ready:
            blocked.add(cid)
            continue
        chosen.append(row)
        if len(chosen) >= limit:
            break
    rows.close()
    c.executemany(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, "
        "claimed_at = ?, updated_at = ? WHERE n = ?",
        [(now, now, row[0]) for row in chosen],
    )
    return [outbox_item((*row[1:5], "sending", row[6] + 1, *row[7:10])) for row in chosen]


def mark_sent_in(c: Any, me: str, result: OpResult, now: float) -> bool:
    """Record one acknowledgement; True when it moved the item to SENT.

    Raises:
        IllegalOutboxMove: the item is FAILED (only a retry moves a FAILED item); nothing
            of this transaction is kept.
    """
    row = c.execute(
        "SELECT kind, conversation_id, state FROM outbox WHERE op_id = ?", (result.op_id,)
    ).fetchone()
    if row is None:
        return False
    kind, cid, state = OpKind(row[0]), row[1], row[2]
    if state != SENT:
        check_move(state, SENT, result.op_id)
    c.execute(
        "UPDATE outbox SET state = 'sent', result = ?, last_error = NULL, "
        "next_attempt_at = NULL, updated_at = ? WHERE op_id = ?",
        (orjson.dumps(_result_dict(result)).decode(), now, result.op_id),
    )
    if kind is OpKind.SEND and result.message_id and result.seq is not None:
        created = result.ts_ms / 1000 if result.ts_ms else now
        _promote_echo(c, me, cid, result.op_id, result.message_id, result.seq, created)
    elif kind is OpKind.CREATE_CONVERSATION:
        c.execute("UPDATE conversations SET pending = 0 WHERE id = ?", (cid,))
    if result.seq is not None:
        c.execute(
            "UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ?", (result.seq, cid)
        )
    return state != SENT


def mark_sent_many(c: Any, me: str, results: Sequence[OpResult], now: float) -> list[bool]:
    """:func:`mark_sent_in` for each result, in the caller's one transaction."""
    return [mark_sent_in(c, me, result, now) for result in results]


def _promote_echo(
    c: Any, me: str, cid: str, op_id: str, message_id: str, seq: int, created: float
) -> None:
    existing = c.execute("SELECT local_id FROM messages WHERE id = ?", (message_id,)).fetchone()
    if existing is not None:
        # The server copy is already stored: drop any leftover echo, never show it twice.
        c.execute("DELETE FROM messages WHERE sender = ? AND op_id = ? AND id IS NULL", (me, op_id))
        return
    # The server just gave this seq to this message: another stored message at that seq is
    # one a restored server forgot (issue 12); it gives way (the resync that follows the
    # server's new epoch makes the rest of the conversation equal the server's).
    stale = "conversation_id = ? AND seq = ? AND (id IS NULL OR id != ?)"
    c.execute(
        f"DELETE FROM message_patches WHERE message_id IN (SELECT id FROM messages WHERE {stale})",
        (cid, seq, message_id),
    )
    c.execute(f"DELETE FROM messages WHERE {stale}", (cid, seq, message_id))
    c.execute(
        "UPDATE messages SET id = ?, seq = ?, state = 'sent', created_at = ? "
        "WHERE sender = ? AND op_id = ? AND id IS NULL",
        (message_id, seq, created, me, op_id),
    )


def _result_dict(result: OpResult) -> dict[str, Any]:
    return {k: v for k, v in attrs.asdict(result).items() if v is not None}


def mark_failed(c: Any, me: str, op_id: str, code: str, reason: str, now: float) -> bool:
    """Park one SENDING item as FAILED; False when unknown or already FAILED.

    Raises:
        IllegalOutboxMove: the item is PENDING (no push of it is in flight, so no answer
            can reject it) or SENT (the server applied it: a rejection cannot undo that).
    """
    row = c.execute("SELECT kind, state FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
    if row is None or row[1] == FAILED:
        return False
    check_move(row[1], FAILED, op_id)
    c.execute(
        "UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ? WHERE op_id = ?",
        (f"{code}: {reason}", now, op_id),
    )
    if row[0] == OpKind.SEND.value:
        c.execute(
            "UPDATE messages SET state = 'failed' WHERE sender = ? AND op_id = ? AND id IS NULL",
            (me, op_id),
        )
    return True


def mark_retry(
    c: Any, op_ids: Iterable[str], error: str, next_attempt_at: float, now: float
) -> None:
    """SENDING items back to PENDING with a backoff; items in other states are left alone
    (the live channel may have confirmed one while its push failed)."""
    c.executemany(
        "UPDATE outbox SET state = 'pending', last_error = ?, next_attempt_at = ?, "
        "updated_at = ? WHERE op_id = ? AND state = 'sending'",
        [(error, next_attempt_at, now, op_id) for op_id in op_ids],
    )


def requeue(c: Any, me: str, op_ids: Iterable[str] | None, now: float) -> list[str]:
    """FAILED items back to PENDING (all when ``op_ids`` is None); all or nothing.

    Raises:
        NotFound: an op id that is not in the outbox.
        IllegalOutboxMove: an item the table does not allow back to PENDING (SENT).
        UsageError: an item that is not FAILED (already PENDING, or SENDING).
    """
    if op_ids is None:
        ids = [r[0] for r in c.execute("SELECT op_id FROM outbox WHERE state = 'failed'")]
    else:
        ids = list(op_ids)
        for op_id in ids:
            row = c.execute("SELECT state FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
            if row is None:
                raise NotFound(f"no operation {op_id} in the outbox")
            old = OutboxState(row[0])
            if old is not FAILED:
                message = f"operation {op_id} is {old.value}, not failed"
                if old is not PENDING and (old, PENDING) not in OUTBOX_TRANSITIONS:
                    raise IllegalOutboxMove(op_id, old, PENDING, message)
                raise UsageError(message)
    c.executemany(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = NULL, "
        "updated_at = ? WHERE op_id = ?",
        [(now, op_id) for op_id in ids],
    )
    c.executemany(
        "UPDATE messages SET state = 'pending' WHERE sender = ? AND op_id = ? AND id IS NULL",
        [(me, op_id) for op_id in ids],
    )
    return ids


def cancel(c: Any, me: str, op_id: str) -> OutboxItem:
    """Delete an unsent operation and its local effect; returns the item as it was.

    Which operations may go is decided by :func:`syncengine.core.cancel.cancel_refusal`; a
    cancel is a deletion, not a move of ``OUTBOX_TRANSITIONS``.

    Raises:
        NotFound: no such operation in the outbox.
        UsageError: it may already have been applied, its local effect cannot be undone, or
            other queued operations depend on it.
    """
    row = c.execute(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
    if row is None:
        raise NotFound(f"no operation {op_id} in the outbox")
    item = outbox_item(row)
    if item.kind is OpKind.SEND:
        dependents = c.execute(
            "SELECT COUNT(*) FROM outbox WHERE state != 'sent' AND op_id != ? "
            "AND json_extract(payload, '$.target_op_id') = ?",
            (op_id, op_id),
        ).fetchone()[0]
    else:
        dependents = c.execute(
            "SELECT COUNT(*) FROM outbox WHERE state != 'sent' AND op_id != ? "
            "AND conversation_id = ?",
            (op_id, item.conversation_id),
        ).fetchone()[0]
    reason = cancel_refusal(item.kind, item.state, item.attempts, int(dependents))
    if reason is not None:
        raise UsageError(f"operation {op_id} ({item.kind.value}) cannot be cancelled: {reason}")
    c.execute("DELETE FROM outbox WHERE op_id = ?", (op_id,))
    if item.kind is OpKind.SEND:
        c.execute(
            "DELETE FROM messages WHERE sender = ? AND op_id = ? AND id IS NULL", (me, op_id)
        )
    elif item.kind is OpKind.CREATE_CONVERSATION:
        cid = item.conversation_id
        if c.execute("SELECT pending FROM conversations WHERE id = ?", (cid,)).fetchone() == (1,):
            c.execute("DELETE FROM members WHERE conversation_id = ?", (cid,))
            c.execute("DELETE FROM conversations WHERE id = ?", (cid,))
    return item


def recover_sending(c: Any, now: float) -> int:
    """Every SENDING item back to PENDING (a crash left them); returns how many."""
    cur = c.execute(
        "UPDATE outbox SET state = 'pending', claimed_at = NULL, updated_at = ? "
        "WHERE state = 'sending'",
        (now,),
    )
    return int(cur.rowcount)


def prune_sent(c: Any, cutoff: float) -> int:
    """Delete SENT rows last changed before ``cutoff``; returns how many."""
    return int(
        c.execute("DELETE FROM outbox WHERE state = 'sent' AND updated_at < ?", (cutoff,)).rowcount
    )


# --- reads -----------------------------------------------------------------------------------


def items(c: Any, state: OutboxState | str | None, limit: int) -> list[OutboxItem]:
    """Outbox items, oldest first, optionally of one state."""
    if state is None:
        rows = c.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY n LIMIT ?", (limit,)
        ).fetchall()
    else:
        rows = c.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = ? ORDER BY n LIMIT ?",
            (OutboxState(state).value, limit),
        ).fetchall()
    return [outbox_item(r) for r in rows]


def item(c: Any, op_id: str) -> OutboxItem | None:
    """One item by op id, or None."""
    row = c.execute(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
    return outbox_item(row) if row else None


def next_attempt_at(c: Any) -> float | None:
    """When the earliest backing-off PENDING item becomes due (None if none waits)."""
    row = c.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()
    return row[0] if row else None


def due_count(c: Any, now: float) -> int:
    """How many PENDING items are due for a push at ``now``."""
    row = c.execute(
        "SELECT COUNT(*) FROM outbox WHERE state = 'pending' "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= ? OR updated_at > ?)",
        (now, now),
    ).fetchone()
    return int(row[0])
