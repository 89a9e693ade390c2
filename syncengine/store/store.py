"""The local store: every read the application makes, the outbox, and the cursor.

How the guarantees are kept (details in docs/store.md):

- **G1 durable accept**: :meth:`Store.enqueue` commits the outbox row (and its local echo) in
  one ``BEGIN IMMEDIATE`` transaction under ``synchronous=FULL`` before it returns. The op id
  is the primary identity: enqueuing an existing op id returns the existing row.
- **G3 atomic catch-up**: :meth:`Store.apply_events` writes a page of events and advances the
  cursor in one transaction; the cursor only moves forward.
- **G4 idempotent merge**: messages are inserted with ``ON CONFLICT DO NOTHING`` on their
  server id and ``(conversation_id, seq)``; a local echo is *updated in place* into the server
  copy, matched by ``(sender, op_id)``, whichever of the ack and the echo comes first. Edits,
  deletes, titles, members and read positions carry a seq guard, so any order and any number
  of repeats reach the same state. Ephemeral rows are ordered by the server's ``ts_ms``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import orjson

from syncengine.errors import NotFound, UsageError
from syncengine.events import (
    ConversationUpdated,
    DurableEvent,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
    ServerEvent,
    TypingStarted,
    TypingStopped,
    UnknownEvent,
    UserPresenceChanged,
)
from syncengine.models import (
    ConnectionState,
    Conversation,
    Message,
    MessageState,
    OpKind,
    OutboxItem,
    OutboxState,
    Presence,
    PresenceStatus,
    SyncHealth,
    Typing,
    new_id,
)
from syncengine.store.db import StoreDB
from syncengine.wire import OpResult

__all__ = ["MAX_BODY_CHARS", "ApplyResult", "Store"]

MAX_BODY_CHARS = 16_000
MAX_TITLE_CHARS = 200
STREAM = "events"
SENDING_LEASE_S = 60.0

_MESSAGE_COLUMNS = """
    m.conversation_id, m.op_id, m.id, m.seq, m.sender,
    CASE WHEN p.deleted = 1 THEN '' WHEN p.body IS NOT NULL THEN p.body ELSE m.body END,
    m.state, m.created_at, p.edited_at, COALESCE(p.deleted, 0)
"""


# A dict lookup, not ``MessageState(value)``: an Enum call costs as much as the rest of a
# row's conversion, and a history page converts 50 rows.
_MESSAGE_STATES: dict[str, MessageState] = {s.value: s for s in MessageState}


def _message(row: Sequence[Any]) -> Message:
    return Message(
        conversation_id=row[0],
        op_id=row[1],
        id=row[2],
        seq=row[3],
        sender=row[4],
        body=row[5],
        state=_MESSAGE_STATES.get(row[6]) or MessageState(row[6]),
        created_at=row[7],
        edited_at=row[8],
        deleted=bool(row[9]),
    )


def _outbox_item(row: Sequence[Any]) -> OutboxItem:
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


_OUTBOX_COLUMNS = (
    "op_id, kind, conversation_id, payload, state, attempts, next_attempt_at, last_error, "
    "created_at"
)


class ApplyResult:
    """What :meth:`Store.apply_events` did: counts, and the own ops the page confirmed."""

    __slots__ = ("applied", "confirmed_ops", "cursor", "unknown")

    def __init__(self) -> None:
        self.applied = 0
        self.unknown = 0
        self.cursor = 0
        self.confirmed_ops: list[str] = []


class Store:
    """The local SQLite store of one account.

    Args:
        path: the database file; created 0600 (folder 0700) if missing.
        user: the local user's name, once known (needed to recognise own echoes). It is
            persisted in ``meta`` by :meth:`set_account`, so later opens can omit it.
        busy_timeout_s: how long a write waits for another process's lock before
            :class:`~syncengine.errors.StoreLocked`.

    Raises:
        StoreCorrupt: the file is damaged or not a database (it is left in place).
        SchemaTooNew: the file was written by a newer syncengine.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        user: str | None = None,
        busy_timeout_s: float = 5.0,
        clock: Any = time.time,
    ) -> None:
        self._db = StoreDB(path, busy_timeout_s=busy_timeout_s)
        self.path = self._db.path
        self._clock = clock
        self.user = user or self.get_meta("user") or ""

    # --- housekeeping -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. The store object must not be used afterwards."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema(self) -> list[str]:
        """Migrations applied to this file, oldest first."""
        return self._db.schema

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` (``"ok"`` when healthy)."""
        return self._db.integrity_check()

    def checkpoint(self) -> None:
        """Fold the WAL into the main file."""
        self._db.checkpoint()

    def set_max_page_count(self, pages: int) -> None:
        """Cap the file size (``PRAGMA max_page_count``): used to simulate a full disk."""
        with self._db.lock:
            self._db.conn.execute(f"PRAGMA max_page_count = {int(pages)}")

    def page_count(self) -> int:
        with self._db.read() as c:
            return int(c.execute("PRAGMA page_count").fetchone()[0])

    # --- meta and account -------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A value from the ``meta`` table, or None."""
        with self._db.read() as c:
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, **values: str | None) -> None:
        """Set (or, with None, delete) ``meta`` values in one transaction."""
        with self._db.write() as c:
            for key, value in values.items():
                if value is None:
                    c.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    c.execute(
                        "INSERT INTO meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, str(value)),
                    )

    def set_account(self, *, server: str, user: str, device: str) -> None:
        """Record which account this store belongs to.

        Raises:
            UsageError: the store already belongs to another user or server (one store per
                account: mixing would show one user's messages to another).
        """
        old_user = self.get_meta("user")
        old_server = self.get_meta("server")
        if old_user and (old_user != user or (old_server and old_server != server)):
            raise UsageError(
                f"{self.path} belongs to {old_user} on {old_server}; use another --db for "
                f"{user} on {server}"
            )
        self.set_meta(server=server, user=user, device=device)
        self.user = user

    def account(self) -> dict[str, str | None]:
        """``server``, ``user`` and ``device`` of this store (None when not logged in)."""
        return {k: self.get_meta(k) for k in ("server", "user", "device")}

    def set_state(self, state: ConnectionState) -> None:
        """Record the connection state for readers in other processes (``syncengine status``)."""
        self.set_meta(state=state.value, state_at=repr(self._clock()))

    # --- outbox: writes (G1) ----------------------------------------------------------------

    def enqueue(
        self,
        kind: OpKind | str,
        conversation_id: str,
        payload: dict[str, Any] | None = None,
        *,
        op_id: str | None = None,
    ) -> tuple[OutboxItem, bool]:
        """Queue an operation durably and show its local effect at once.

        Returns ``(item, created)``. With an ``op_id`` that is already queued, the existing
        item is returned and ``created`` is False (nothing else changes).

        Raises:
            UsageError: an invalid payload (empty or too long body, bad seq, ...).
            NotFound: the conversation or target message is not in the store.
            StoreError: the write failed; nothing was queued.
        """
        try:
            kind = OpKind(kind)
        except ValueError:
            raise UsageError(
                f"unknown operation kind {kind!r}; expected one of "
                f"{', '.join(k.value for k in OpKind)}"
            ) from None
        if payload is not None and not isinstance(payload, Mapping):
            raise UsageError("payload must be a mapping of field names to values")
        payload = dict(payload or {})
        if op_id is not None and not isinstance(op_id, str):
            raise UsageError("op_id must be a string")
        op_id = op_id or new_id(self._clock())
        _check_text(op_id, "op_id")
        _validate(kind, conversation_id, payload)
        if not self.user:
            raise UsageError("the store has no account: log in first")
        now = self._clock()
        with self._db.write() as c:
            row = c.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE op_id = ?", (op_id,)
            ).fetchone()
            if row is not None:
                return _outbox_item(row), False
            if kind is OpKind.SEND:
                sent = c.execute(
                    "SELECT conversation_id, created_at FROM messages "
                    "WHERE sender = ? AND op_id = ? AND id IS NOT NULL",
                    (self.user, op_id),
                ).fetchone()
                if sent is not None:
                    # Sent long ago and its outbox row pruned: the op id is still taken (a
                    # second echo would collide with the server copy), and the send is done.
                    done = OutboxItem(
                        op_id=op_id,
                        kind=kind,
                        conversation_id=sent[0],
                        payload=payload,
                        state=OutboxState.SENT,
                        created_at=sent[1],
                    )
                    return done, False
            self._local_effect(c, kind, conversation_id, payload, op_id, now)
            c.execute(
                "INSERT INTO outbox(op_id, kind, conversation_id, payload, state, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                (op_id, kind.value, conversation_id, orjson.dumps(payload).decode(), now, now),
            )
        item = OutboxItem(
            op_id=op_id,
            kind=kind,
            conversation_id=conversation_id,
            payload=payload,
            state=OutboxState.PENDING,
            created_at=now,
        )
        return item, True

    def _local_effect(
        self, c: Any, kind: OpKind, cid: str, payload: dict[str, Any], op_id: str, now: float
    ) -> None:
        if kind is OpKind.CREATE_CONVERSATION:
            members = sorted({*payload.get("members", []), self.user})
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
            c.execute(
                "INSERT INTO messages(conversation_id, op_id, sender, body, state, created_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                (cid, op_id, self.user, payload["body"], now),
            )
        elif kind in (OpKind.EDIT, OpKind.DELETE):
            target = self._resolve_target(c, cid, payload)
            if target["id"] is None:
                # Still a local echo: change it in place; the server applies the op after the
                # send (FIFO per conversation), referring to it by target_op_id.
                if kind is OpKind.EDIT:
                    c.execute(
                        "UPDATE messages SET body = ? WHERE local_id = ?",
                        (payload["body"], target["local_id"]),
                    )
                else:
                    c.execute(
                        "UPDATE messages SET body = '' WHERE local_id = ?", (target["local_id"],)
                    )
                payload.pop("message_id", None)
                payload["target_op_id"] = target["op_id"]
            else:
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
        elif kind is OpKind.MARK_READ:
            c.execute(
                "UPDATE conversations SET read_seq = MAX(read_seq, ?) WHERE id = ?",
                (payload["seq"], cid),
            )

    def _resolve_target(self, c: Any, cid: str, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("message_id"):
            row = c.execute(
                "SELECT local_id, id, op_id, sender FROM messages "
                "WHERE id = ? AND conversation_id = ?",
                (payload["message_id"], cid),
            ).fetchone()
        else:
            row = c.execute(
                "SELECT local_id, id, op_id, sender FROM messages "
                "WHERE op_id = ? AND sender = ? AND conversation_id = ?",
                (payload.get("target_op_id"), self.user, cid),
            ).fetchone()
        if row is None:
            raise NotFound("no such message in this conversation")
        return {"local_id": row[0], "id": row[1], "op_id": row[2], "sender": row[3]}

    # --- outbox: the push side ----------------------------------------------------------------

    def claim(self, limit: int = 500, *, now: float | None = None) -> list[OutboxItem]:
        """Take up to ``limit`` operations for pushing and mark them SENDING.

        Order is FIFO per conversation: an item waiting for its backoff holds back the items
        behind it in the same conversation (so a send is never overtaken by its edit), while a
        FAILED item holds back nothing. A SENDING item whose lease ran out (the process that
        claimed it died) is claimable again.
        """
        if limit < 1:
            return []  # the loop below would take one before checking the limit
        now = self._clock() if now is None else now
        lease_cutoff = now - SENDING_LEASE_S
        with self._db.write() as c:
            # Stepped lazily, not fetched whole: a long outbox is read only as far as the
            # batch needs (a 10k backlog was read 20 times over to push it).
            rows = c.execute(
                f"SELECT n, {_OUTBOX_COLUMNS}, claimed_at, updated_at FROM outbox "
                "WHERE state IN ('pending', 'sending') ORDER BY n"
            )
            blocked: set[str] = set()
            chosen: list[tuple[Any, ...]] = []
            for row in rows:
                cid = row[3]
                if cid in blocked:
                    continue
                state, next_at, claimed_at, updated_at = row[5], row[7], row[10], row[11]
                # A retry scheduled "after now" by a clock that has since been set back (an
                # NTP step, a user fixing the date) is due now, not hours or days later.
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
        return [_outbox_item((*row[1:5], "sending", row[6] + 1, *row[7:10])) for row in chosen]

    def mark_sent(self, result: OpResult) -> bool:
        """Record the server's acknowledgement of one operation.

        For a send, the local echo becomes the server copy (server id and seq) in place; if the
        server copy was already stored by the live channel or a pull, nothing is duplicated.
        Returns True when this call moved the item to SENT (False if it already was).
        """
        return self.mark_sent_many([result])[0]

    def mark_sent_many(self, results: Sequence[OpResult]) -> list[bool]:
        """:meth:`mark_sent` for a whole push batch, in one transaction (one commit, not one
        per operation: a batch of 500 acknowledgements costs about one durable write).

        Returns, for each result, whether this call moved its item to SENT.
        """
        now = self._clock()
        with self._db.write() as c:
            return [self._mark_sent_in(c, result, now) for result in results]

    def _mark_sent_in(self, c: Any, result: OpResult, now: float) -> bool:
        row = c.execute(
            "SELECT kind, conversation_id, state FROM outbox WHERE op_id = ?",
            (result.op_id,),
        ).fetchone()
        if row is None:
            return False
        kind, cid, state = OpKind(row[0]), row[1], row[2]
        c.execute(
            "UPDATE outbox SET state = 'sent', result = ?, last_error = NULL, "
            "next_attempt_at = NULL, updated_at = ? WHERE op_id = ?",
            (orjson.dumps(_result_dict(result)).decode(), now, result.op_id),
        )
        if kind is OpKind.SEND and result.message_id and result.seq is not None:
            created = result.ts_ms / 1000 if result.ts_ms else now
            self._promote_echo(c, cid, result.op_id, result.message_id, result.seq, created)
        elif kind is OpKind.CREATE_CONVERSATION:
            c.execute("UPDATE conversations SET pending = 0 WHERE id = ?", (cid,))
        if result.seq is not None:
            c.execute(
                "UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ?",
                (result.seq, cid),
            )
        return state != "sent"

    def _promote_echo(
        self, c: Any, cid: str, op_id: str, message_id: str, seq: int, created: float
    ) -> None:
        existing = c.execute("SELECT local_id FROM messages WHERE id = ?", (message_id,)).fetchone()
        if existing is not None:
            # The server copy is already stored: drop any leftover echo, never show it twice.
            c.execute(
                "DELETE FROM messages WHERE sender = ? AND op_id = ? AND id IS NULL",
                (self.user, op_id),
            )
            return
        c.execute(
            "UPDATE messages SET id = ?, seq = ?, state = 'sent', created_at = ? "
            "WHERE sender = ? AND op_id = ? AND id IS NULL",
            (message_id, seq, created, self.user, op_id),
        )

    def mark_failed(self, op_id: str, code: str, reason: str) -> bool:
        """Park one operation as FAILED (a permanent rejection). Others keep flowing.

        Returns True when this call moved it to FAILED.
        """
        now = self._clock()
        with self._db.write() as c:
            row = c.execute("SELECT kind, state FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
            if row is None or row[1] in ("sent", "failed"):
                return False
            c.execute(
                "UPDATE outbox SET state = 'failed', last_error = ?, updated_at = ? "
                "WHERE op_id = ?",
                (f"{code}: {reason}", now, op_id),
            )
            if row[0] == OpKind.SEND.value:
                c.execute(
                    "UPDATE messages SET state = 'failed' WHERE sender = ? AND op_id = ? "
                    "AND id IS NULL",
                    (self.user, op_id),
                )
        return True

    def mark_retry(self, op_ids: Iterable[str], error: str, next_attempt_at: float) -> None:
        """Return SENDING operations to PENDING after a transient failure, with a backoff."""
        now = self._clock()
        with self._db.write() as c:
            c.executemany(
                "UPDATE outbox SET state = 'pending', last_error = ?, next_attempt_at = ?, "
                "updated_at = ? WHERE op_id = ? AND state = 'sending'",
                [(error, next_attempt_at, now, op_id) for op_id in op_ids],
            )

    def requeue(self, op_ids: Iterable[str] | None = None) -> list[str]:
        """Move FAILED operations back to PENDING (all of them when ``op_ids`` is None).

        Raises:
            NotFound: an op id that is not in the outbox.
            UsageError: an op id whose item is not FAILED.
        """
        now = self._clock()
        with self._db.write() as c:
            if op_ids is None:
                ids = [r[0] for r in c.execute("SELECT op_id FROM outbox WHERE state = 'failed'")]
            else:
                ids = list(op_ids)
                for op_id in ids:
                    row = c.execute("SELECT state FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
                    if row is None:
                        raise NotFound(f"no operation {op_id} in the outbox")
                    if row[0] != "failed":
                        raise UsageError(f"operation {op_id} is {row[0]}, not failed")
            c.executemany(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = NULL, "
                "updated_at = ? WHERE op_id = ?",
                [(now, op_id) for op_id in ids],
            )
            c.executemany(
                "UPDATE messages SET state = 'pending' WHERE sender = ? AND op_id = ? "
                "AND id IS NULL",
                [(self.user, op_id) for op_id in ids],
            )
        return ids

    def recover_sending(self) -> int:
        """At start-up of the syncing process: items left SENDING by a crash become PENDING.

        They are pushed again with the same op id; the server's deduplication makes the
        replay harmless (G2). Returns how many were recovered.
        """
        now = self._clock()
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE outbox SET state = 'pending', claimed_at = NULL, updated_at = ? "
                "WHERE state = 'sending'",
                (now,),
            )
            return cur.rowcount

    def outbox(
        self, state: OutboxState | str | None = None, *, limit: int = 1000
    ) -> list[OutboxItem]:
        """Outbox items, oldest first, optionally of one state."""
        with self._db.read() as c:
            if state is None:
                rows = c.execute(
                    f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY n LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = c.execute(
                    f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = ? ORDER BY n LIMIT ?",
                    (OutboxState(state).value, limit),
                ).fetchall()
        return [_outbox_item(r) for r in rows]

    def outbox_item(self, op_id: str) -> OutboxItem | None:
        """One outbox item by op id, or None."""
        with self._db.read() as c:
            row = c.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE op_id = ?", (op_id,)
            ).fetchone()
        return _outbox_item(row) if row else None

    def next_attempt_at(self) -> float | None:
        """When the earliest backing-off pending item becomes due (None if none waits)."""
        with self._db.read() as c:
            row = c.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'"
            ).fetchone()
        return row[0] if row else None

    def prune_sent(self, older_than_s: float = 7 * 86400) -> int:
        """Delete SENT outbox rows older than ``older_than_s``; returns how many."""
        cutoff = self._clock() - older_than_s
        with self._db.write() as c:
            return c.execute(
                "DELETE FROM outbox WHERE state = 'sent' AND updated_at < ?", (cutoff,)
            ).rowcount

    # --- applying server events (G3, G4) ---------------------------------------------------------

    def cursor(self) -> int:
        """The persisted stream position: every event up to it is stored."""
        with self._db.read() as c:
            row = c.execute("SELECT pos FROM cursors WHERE stream = ?", (STREAM,)).fetchone()
        return int(row[0]) if row else 0

    def reset_cursor(self, pos: int) -> None:
        """Set the cursor to ``pos``, even backwards (only a resync does this)."""
        with self._db.write() as c:
            self._set_cursor(c, pos, force=True)

    def _set_cursor(self, c: Any, pos: int, *, force: bool = False) -> None:
        guard = "" if force else " WHERE excluded.pos > cursors.pos"
        c.execute(
            "INSERT INTO cursors(stream, pos, updated_at) VALUES (?, ?, ?) "
            f"ON CONFLICT(stream) DO UPDATE SET pos = excluded.pos, "
            f"updated_at = excluded.updated_at{guard}",
            (STREAM, pos, self._clock()),
        )

    def apply_events(
        self,
        events: Sequence[ServerEvent],
        *,
        cursor: int | None = None,
        synced: bool = False,
    ) -> ApplyResult:
        """Apply durable server events, and advance the cursor, in one transaction.

        Events may repeat or come in any order; the resulting state is the same (G4). With
        ``cursor`` the stream position moves to it (never backwards) in the same transaction
        (G3). ``synced`` records ``last_sync_at`` too (the catch-up reached the end).
        Non-durable events in ``events`` are ignored here (see :meth:`apply_typing` and
        :meth:`apply_presence`).
        """
        result = ApplyResult()
        me = self.user
        convs: dict[str, int] = {}
        inserts: list[tuple[Any, ...]] = []
        own: list[tuple[Any, ...]] = []
        edits: list[tuple[Any, ...]] = []
        deletes: list[tuple[Any, ...]] = []
        reads_me: list[tuple[Any, ...]] = []
        reads_other: list[tuple[Any, ...]] = []
        updates: list[ConversationUpdated] = []
        for ev in events:
            if isinstance(ev, DurableEvent):
                cid = ev.conversation_id
                if convs.get(cid, 0) < ev.seq:
                    convs[cid] = ev.seq
                result.applied += 1
                if isinstance(ev, MessageReceived):
                    created = ev.ts_ms / 1000
                    inserts.append(
                        (cid, ev.seq, ev.message_id, ev.op_id, ev.sender, ev.body, created)
                    )
                    if ev.op_id is not None and ev.sender == me:
                        own.append((ev.message_id, ev.seq, created, me, ev.op_id))
                        result.confirmed_ops.append(ev.op_id)
                elif isinstance(ev, MessageUpdated):
                    edits.append((ev.message_id, ev.body, ev.seq, ev.ts_ms / 1000))
                elif isinstance(ev, MessageDeleted):
                    deletes.append((ev.message_id,))
                elif isinstance(ev, ConversationUpdated):
                    updates.append(ev)
                elif isinstance(ev, ReadReceipt):
                    if ev.user == me:
                        reads_me.append((ev.read_seq, cid))
                    else:
                        reads_other.append((cid, ev.user, ev.read_seq))
            elif isinstance(ev, UnknownEvent):
                result.unknown += 1
        now = self._clock()
        with self._db.write() as c:
            if convs:
                c.executemany(
                    "INSERT INTO conversations(id, created_at) VALUES (?, ?) "
                    "ON CONFLICT(id) DO NOTHING",
                    [(cid, now) for cid in convs],
                )
            if own:
                # Promote local echoes in place before inserting: the echo and the server
                # copy must end as one row (G4), whichever of ack and echo came first.
                c.executemany(
                    "UPDATE messages SET id = ?, seq = ?, state = 'sent', created_at = ? "
                    "WHERE sender = ? AND op_id = ? AND id IS NULL",
                    own,
                )
                c.executemany(
                    "UPDATE outbox SET state = 'sent', updated_at = ? "
                    "WHERE op_id = ? AND state IN ('pending', 'sending')",
                    [(now, o[4]) for o in own],
                )
            if inserts:
                c.executemany(
                    "INSERT INTO messages(conversation_id, seq, id, op_id, sender, body, state, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, 'sent', ?) ON CONFLICT DO NOTHING",
                    inserts,
                )
            if edits:
                c.executemany(
                    "INSERT INTO message_patches(message_id, body, edit_seq, edited_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(message_id) DO UPDATE SET "
                    "body = excluded.body, edit_seq = excluded.edit_seq, "
                    "edited_at = excluded.edited_at "
                    "WHERE excluded.edit_seq > message_patches.edit_seq",
                    edits,
                )
            if deletes:
                c.executemany(
                    "INSERT INTO message_patches(message_id, deleted) VALUES (?, 1) "
                    "ON CONFLICT(message_id) DO UPDATE SET deleted = 1",
                    deletes,
                )
            for ev in updates:
                members = orjson.dumps(sorted(ev.members)).decode()
                cur = c.execute(
                    "UPDATE conversations SET title = ?, members = ?, meta_seq = ?, pending = 0 "
                    "WHERE id = ? AND meta_seq < ?",
                    (ev.title, members, ev.seq, ev.conversation_id, ev.seq),
                )
                if cur.rowcount:
                    c.execute(
                        "DELETE FROM members WHERE conversation_id = ?", (ev.conversation_id,)
                    )
                    c.executemany(
                        "INSERT INTO members(conversation_id, user) VALUES (?, ?)",
                        [(ev.conversation_id, m) for m in sorted(set(ev.members))],
                    )
            if reads_me:
                c.executemany(
                    "UPDATE conversations SET read_seq = MAX(read_seq, ?) WHERE id = ?", reads_me
                )
            if reads_other:
                c.executemany(
                    "INSERT INTO reads(conversation_id, user, read_seq) VALUES (?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)",
                    reads_other,
                )
            if convs:
                c.executemany(
                    "UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ?",
                    [(seq, cid) for cid, seq in convs.items()],
                )
            if result.unknown:
                c.execute(
                    "INSERT INTO meta(key, value) VALUES ('unknown_events', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
                    (result.unknown, result.unknown),
                )
            if cursor is not None:
                self._set_cursor(c, cursor)
            if synced:
                c.execute(
                    "INSERT INTO meta(key, value) VALUES ('last_sync_at', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (repr(now),),
                )
            row = c.execute("SELECT pos FROM cursors WHERE stream = ?", (STREAM,)).fetchone()
            result.cursor = int(row[0]) if row else 0
        return result

    def quarantine(self, raw: str, error: str, pos: int | None = None) -> None:
        """Keep an event that could not be applied (a poison event) for inspection."""
        with self._db.write() as c:
            c.execute(
                "INSERT INTO quarantine(pos, raw, error, at) VALUES (?, ?, ?, ?)",
                (pos, raw[:65536], error[:1000], self._clock()),
            )

    def quarantined(self) -> list[dict[str, Any]]:
        """Quarantined events, oldest first."""
        with self._db.read() as c:
            rows = c.execute("SELECT pos, raw, error, at FROM quarantine ORDER BY id").fetchall()
        return [{"pos": r[0], "raw": r[1], "error": r[2], "at": r[3]} for r in rows]

    def apply_history(self, messages: Sequence[Any]) -> int:
        """Store history messages (``wire.HistoryMessage``) fetched by back-pagination or a resync.

        Same merge rules as :meth:`apply_events`; the cursor does not move. Returns the
        number of messages given.
        """
        events: list[ServerEvent] = []
        for m in messages:
            events.append(
                MessageReceived(
                    pos=0,
                    conversation_id=m.conversation_id,
                    seq=m.seq,
                    ts_ms=m.ts_ms,
                    message_id=m.message_id,
                    op_id=m.op_id,
                    sender=m.sender,
                    body=m.body,
                )
            )
            if m.deleted:
                events.append(
                    MessageDeleted(
                        pos=0,
                        conversation_id=m.conversation_id,
                        seq=m.seq,
                        ts_ms=m.ts_ms,
                        message_id=m.message_id,
                        deleted_by="",
                    )
                )
            elif m.edited_ms is not None:
                # The history copy carries the current body; seq 0 keeps any newer edit.
                events.append(
                    MessageUpdated(
                        pos=0,
                        conversation_id=m.conversation_id,
                        seq=0,
                        ts_ms=m.edited_ms,
                        message_id=m.message_id,
                        body=m.body,
                        editor=m.sender,
                    )
                )
        self.apply_events(events)
        return len(messages)

    def replace_conversations(self, conversations: Sequence[dict[str, Any]]) -> None:
        """Resync: make the conversation list (titles, members) match a server snapshot.

        Conversations absent from the snapshot are kept (with their messages) but lose this
        user from their members, so they no longer appear in :meth:`conversations`. Local
        conversations still pending creation are left alone.
        """
        with self._db.write() as c:
            seen = set()
            for conv in conversations:
                cid = conv["id"]
                seen.add(cid)
                members = sorted(set(conv.get("members", [])))
                # The snapshot is the state at its last_seq. A conversation_updated already
                # stored with a higher seq (the live channel ran while the snapshot was on its
                # way) is newer: keep it, or the replay from the snapshot's head would be
                # refused by the meta_seq guard and the older title/members would stick.
                cur = c.execute(
                    "INSERT INTO conversations(id, title, members, meta_seq, last_seq, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "title = excluded.title, members = excluded.members, "
                    "meta_seq = excluded.meta_seq "
                    "WHERE excluded.meta_seq >= conversations.meta_seq",
                    (
                        cid,
                        conv.get("title", ""),
                        orjson.dumps(members).decode(),
                        conv.get("last_seq", 0),
                        0,
                        self._clock(),
                    ),
                )
                c.execute("UPDATE conversations SET pending = 0 WHERE id = ?", (cid,))
                if cur.rowcount:
                    c.execute("DELETE FROM members WHERE conversation_id = ?", (cid,))
                    c.executemany(
                        "INSERT INTO members(conversation_id, user) VALUES (?, ?)",
                        [(cid, m) for m in members],
                    )
            for (cid,) in c.execute("SELECT id FROM conversations WHERE pending = 0").fetchall():
                if cid not in seen:
                    c.execute(
                        "DELETE FROM members WHERE conversation_id = ? AND user = ?",
                        (cid, self.user),
                    )

    # --- ephemeral state --------------------------------------------------------------------

    def apply_typing(
        self, conversation_id: str, user: str, *, typing: bool, ts_ms: int, ttl_s: float = 8.0
    ) -> bool:
        """Record someone typing (or stopping), ordered by the server's ``ts_ms``.

        The expiry is computed on the local clock from the time of receipt, so a skewed
        clock cannot keep an indicator on. Returns True when the row changed.
        """
        expires = self._clock() + ttl_s if typing else 0.0
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO typing(conversation_id, user, expires_at, ts_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET expires_at = excluded.expires_at, "
                "ts_ms = excluded.ts_ms WHERE excluded.ts_ms >= typing.ts_ms",
                (conversation_id, user, expires, ts_ms),
            )
            return cur.rowcount > 0

    def clear_typing(self) -> None:
        """Forget every typing indicator (on disconnect: a lost stop must not stick)."""
        with self._db.write() as c:
            c.execute("DELETE FROM typing")

    def prune_typing(self) -> int:
        """Delete expired typing rows; returns how many."""
        now = self._clock()
        with self._db.write() as c:
            return c.execute("DELETE FROM typing WHERE expires_at <= ?", (now,)).rowcount

    def typing(self, conversation_id: str) -> list[Typing]:
        """Who is typing in a conversation now (expired entries hidden, own excluded)."""
        now = self._clock()
        with self._db.read() as c:
            rows = c.execute(
                "SELECT user, expires_at FROM typing WHERE conversation_id = ? "
                "AND expires_at > ? AND user != ? ORDER BY user",
                (conversation_id, now, self.user),
            ).fetchall()
        return [Typing(user=u, conversation_id=conversation_id, expires_at=e) for u, e in rows]

    def apply_presence(
        self, user: str, status: str, *, ts_ms: int, last_seen_ms: int | None = None
    ) -> bool:
        """Record a presence change, ordered by the server's ``ts_ms``. True when it changed.

        Raises:
            UsageError: ``status`` is not one of :class:`PresenceStatus`.
        """
        try:
            status = PresenceStatus(status).value
        except ValueError:
            raise UsageError(f"unknown presence status {status!r}") from None
        last_seen = last_seen_ms / 1000 if last_seen_ms is not None else None
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO presence(user, status, last_seen, ts_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(user) DO UPDATE SET status = excluded.status, "
                "last_seen = COALESCE(excluded.last_seen, presence.last_seen), "
                "ts_ms = excluded.ts_ms WHERE excluded.ts_ms >= presence.ts_ms",
                (user, status, last_seen, ts_ms),
            )
            return cur.rowcount > 0

    def apply_ephemeral(self, events: Sequence[ServerEvent]) -> list[ServerEvent]:
        """Record a batch of typing and presence events in one transaction.

        Returns the events less those refused (a presence with an unknown status); other
        events (unknown types) are kept and not stored.
        """
        kept: list[ServerEvent] = []
        now = self._clock()
        with self._db.write() as c:
            for ev in events:
                if isinstance(ev, TypingStarted):
                    if ev.user != self.user:
                        c.execute(
                            "INSERT INTO typing(conversation_id, user, expires_at, ts_ms) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                            "expires_at = excluded.expires_at, ts_ms = excluded.ts_ms "
                            "WHERE excluded.ts_ms >= typing.ts_ms",
                            (ev.conversation_id, ev.user, now + ev.ttl_ms / 1000, ev.ts_ms),
                        )
                elif isinstance(ev, TypingStopped):
                    c.execute(
                        "INSERT INTO typing(conversation_id, user, expires_at, ts_ms) "
                        "VALUES (?, ?, 0.0, ?) ON CONFLICT DO UPDATE SET "
                        "expires_at = excluded.expires_at, ts_ms = excluded.ts_ms "
                        "WHERE excluded.ts_ms >= typing.ts_ms",
                        (ev.conversation_id, ev.user, ev.ts_ms),
                    )
                elif isinstance(ev, UserPresenceChanged):
                    try:
                        status = PresenceStatus(ev.status).value
                    except ValueError:
                        continue
                    last_seen = ev.last_seen_ms / 1000 if ev.last_seen_ms is not None else None
                    c.execute(
                        "INSERT INTO presence(user, status, last_seen, ts_ms) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT(user) DO UPDATE SET "
                        "status = excluded.status, "
                        "last_seen = COALESCE(excluded.last_seen, presence.last_seen), "
                        "ts_ms = excluded.ts_ms WHERE excluded.ts_ms >= presence.ts_ms",
                        (ev.user, status, last_seen, ev.ts_ms),
                    )
                kept.append(ev)
        return kept

    def presence(self, user: str) -> Presence | None:
        """A user's last known presence, or None if never seen."""
        with self._db.read() as c:
            row = c.execute(
                "SELECT user, status, last_seen FROM presence WHERE user = ?", (user,)
            ).fetchone()
        if row is None:
            return None
        return Presence(user=row[0], status=PresenceStatus(row[1]), last_seen=row[2])

    def all_presence(self) -> list[Presence]:
        """Every known presence, by user name."""
        with self._db.read() as c:
            rows = c.execute(
                "SELECT user, status, last_seen FROM presence ORDER BY user"
            ).fetchall()
        return [Presence(user=r[0], status=PresenceStatus(r[1]), last_seen=r[2]) for r in rows]

    # --- reads ------------------------------------------------------------------------------

    def conversations(self) -> list[Conversation]:
        """The conversations this user is a member of, with unread counts, newest activity first."""
        me = self.user
        with self._db.read() as c:
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

    def conversation(self, conversation_id: str) -> Conversation:
        """One conversation. Raises NotFound."""
        for conv in self.conversations():
            if conv.id == conversation_id:
                return conv
        raise NotFound(f"no conversation {conversation_id} in the store")

    def has_conversation(self, conversation_id: str) -> bool:
        with self._db.read() as c:
            return (
                c.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
                is not None
            )

    def messages(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[Message]:
        """A page of messages, oldest first.

        Server messages are ordered by seq. Without ``before`` the page is the newest
        ``limit`` server messages followed by the local echoes still pending or failed, in
        send order (they sit after the last server message, never interleaved by clock).
        """
        if limit < 1:
            raise UsageError("limit must be at least 1")
        with self._db.read() as c:
            return self._messages(c, conversation_id, before, limit)

    def _messages(
        self, c: Any, conversation_id: str, before: int | None, limit: int
    ) -> list[Message]:
        if before is None:
            rows = c.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m "
                "LEFT JOIN message_patches p ON p.message_id = m.id "
                "WHERE m.conversation_id = ? AND m.seq IS NOT NULL "
                "ORDER BY m.seq DESC LIMIT ?",
                (conversation_id, limit),
            ).fetchall()
            echoes = c.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m "
                "LEFT JOIN message_patches p ON p.message_id = m.id "
                "WHERE m.conversation_id = ? AND m.seq IS NULL ORDER BY m.local_id",
                (conversation_id,),
            ).fetchall()
        else:
            rows = c.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m "
                "LEFT JOIN message_patches p ON p.message_id = m.id "
                "WHERE m.conversation_id = ? AND m.seq < ? "
                "ORDER BY m.seq DESC LIMIT ?",
                (conversation_id, before, limit),
            ).fetchall()
            echoes = []
        return [_message(r) for r in reversed(rows)] + [_message(r) for r in echoes]

    def page(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[Message], int | None, bool]:
        """One read transaction for a history page: ``(messages, lowest stored seq,
        history complete)``, as :meth:`messages`, :meth:`lowest_seq` and
        :meth:`history_complete` would answer.

        Raises:
            NotFound: the conversation is not in the store.
        """
        if limit < 1:
            raise UsageError("limit must be at least 1")
        with self._db.read() as c:
            if (
                c.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
                is None
            ):
                raise NotFound(f"no conversation {conversation_id} in the store")
            messages = self._messages(c, conversation_id, before, limit)
            lowest = c.execute(
                "SELECT MIN(seq) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            complete = c.execute(
                "SELECT 1 FROM meta WHERE key = ? AND value = '1'", (f"eoh:{conversation_id}",)
            ).fetchone()
        return messages, lowest, complete is not None

    def message_by_op(self, op_id: str) -> Message | None:
        """This user's message created by send operation ``op_id`` (echo or server copy)."""
        with self._db.read() as c:
            row = c.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m "
                "LEFT JOIN message_patches p ON p.message_id = m.id "
                "WHERE m.sender = ? AND m.op_id = ?",
                (self.user, op_id),
            ).fetchone()
        return _message(row) if row else None

    def due_count(self, now: float) -> int:
        """How many PENDING operations are due for a push at ``now`` (cheap, read-only)."""
        with self._db.read() as c:
            row = c.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending' "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ? OR updated_at > ?)",
                (now, now),
            ).fetchone()
        return int(row[0])

    def message_count(self, conversation_id: str | None = None) -> int:
        with self._db.read() as c:
            if conversation_id is None:
                return int(c.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
            return int(
                c.execute(
                    "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)
                ).fetchone()[0]
            )

    def lowest_seq(self, conversation_id: str) -> int | None:
        """The smallest server seq stored for a conversation (None if none)."""
        with self._db.read() as c:
            row = c.execute(
                "SELECT MIN(seq) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
        return row[0] if row else None

    def history_complete(self, conversation_id: str) -> bool:
        """True once back-pagination reached the server's end of history."""
        return self.get_meta(f"eoh:{conversation_id}") == "1"

    def set_history_complete(self, conversation_id: str) -> None:
        self.set_meta(**{f"eoh:{conversation_id}": "1"})

    def health(self, *, open_gaps: int | None = None) -> SyncHealth:
        """The sync-health summary, derived from the store (pitfall 10: never from a flag)."""
        now = self._clock()
        with self._db.read() as c:
            counts = dict(c.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
            oldest = c.execute(
                "SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'sending')"
            ).fetchone()[0]
            meta = dict(
                c.execute(
                    "SELECT key, value FROM meta WHERE key IN "
                    "('state', 'last_sync_at', 'open_gaps')"
                ).fetchall()
            )
            row = c.execute("SELECT pos FROM cursors WHERE stream = ?", (STREAM,)).fetchone()
            n_conv = c.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
            n_msg = c.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        gaps = open_gaps if open_gaps is not None else int(meta.get("open_gaps") or 0)
        return SyncHealth(
            state=ConnectionState(meta.get("state") or ConnectionState.OFFLINE.value),
            pending=counts.get("pending", 0),
            sending=counts.get("sending", 0),
            failed=counts.get("failed", 0),
            oldest_pending_age_s=(now - oldest) if oldest is not None else None,
            cursor=int(row[0]) if row else 0,
            last_sync_at=float(meta["last_sync_at"]) if meta.get("last_sync_at") else None,
            open_gaps=gaps,
            conversations=n_conv,
            messages=n_msg,
        )


def _result_dict(result: OpResult) -> dict[str, Any]:
    return {k: v for k, v in attrs.asdict(result).items() if v is not None}


_MAX_SQL_INT = (1 << 63) - 1


def _check_text(value: str, what: str) -> None:
    # SQLite and the wire need valid UTF-8: a lone surrogate would fail deep inside the
    # write (UnicodeEncodeError from sqlite3, JSONEncodeError from orjson) instead of here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid text (lone surrogate)") from None


def _validate(kind: OpKind, conversation_id: str, payload: dict[str, Any]) -> None:
    if not isinstance(conversation_id, str) or not conversation_id:
        raise UsageError("conversation_id must be a non-empty string")
    _check_text(conversation_id, "conversation_id")
    if kind in (OpKind.SEND, OpKind.EDIT):
        body = payload.get("body")
        if not isinstance(body, str) or not body.strip():
            raise UsageError("body must be a non-empty string")
        if len(body) > MAX_BODY_CHARS:
            raise UsageError(f"body is {len(body)} characters; the limit is {MAX_BODY_CHARS}")
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("body is not valid text (lone surrogate)") from None
    if kind in (OpKind.EDIT, OpKind.DELETE) and not (
        payload.get("message_id") or payload.get("target_op_id")
    ):
        raise UsageError("edit and delete need message_id or target_op_id")
    if kind is OpKind.MARK_READ:
        seq = payload.get("seq")
        if type(seq) is not int or not 0 <= seq <= _MAX_SQL_INT:
            raise UsageError("seq must be a non-negative 64-bit integer")
    if kind is OpKind.CREATE_CONVERSATION:
        title = payload.get("title")
        if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_CHARS:
            raise UsageError(f"title must be 1 to {MAX_TITLE_CHARS} characters")
        members = payload.get("members", [])
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise UsageError("members must be a list of user names")
    try:
        # The payload travels as JSON: refuse what cannot (sets, objects, lone surrogates in
        # any string, integers beyond 64 bits) before anything is written.
        orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise UsageError(f"payload cannot be sent: {exc}") from None
