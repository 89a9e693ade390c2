"""SQLite storage of the event log, messages and operation records.

:class:`LogReads` is shared by the storage and its write transactions; :class:`LogTx` adds
the writes, which exist only inside a transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import orjson

from syncengine.protocol import codec
from syncengine.protocol.bodies import HistoryMessage, OpResult
from syncengine.server import rules
from syncengine.server.storage.interface import MessageRow, OpRecord

__all__ = ["LogReads", "LogTx"]

_MESSAGE_COLUMNS = (
    "message_id, conversation_id, seq, op_id, sender, body, ts_ms, edited_ms, deleted, device"
)


def _history_message(row: Sequence[Any]) -> HistoryMessage:
    message_id, conversation_id, seq, op_id, sender, body, ts_ms, edited_ms, deleted = row[:9]
    return HistoryMessage(
        message_id=message_id,
        conversation_id=conversation_id,
        seq=seq,
        op_id=op_id,
        sender=sender,
        body=body,
        ts_ms=ts_ms,
        edited_ms=edited_ms,
        deleted=bool(deleted),
    )


class LogReads:
    """Event log, message and operation reads. Needs ``conn``, ``_lock``, ``_head`` and
    ``_oldest``."""

    conn: sqlite3.Connection
    _lock: threading.RLock
    _head: int
    _oldest: int

    def pull(self, user: str, since: int, limit: int) -> tuple[list[str], int, bool]:
        """The events visible to ``user`` after ``since``, oldest first.

        A user sees an event when its position falls in one of their membership spans
        (from the event that added them to the one that removed them, both included).

        Returns:
            The events' JSON texts, the cursor to continue from, and whether more may wait.

        Raises:
            CursorExpired: see :func:`syncengine.server.rules.check_cursor`.
        """
        with self._lock:
            head = self._head
            rules.check_cursor(since, self._oldest, head)
            end = rules.scan_end(since, head)
            rows = self.conn.execute(
                "SELECT e.pos, e.data FROM events e WHERE e.pos > ? AND e.pos <= ?"
                " AND EXISTS (SELECT 1 FROM spans s WHERE s.user = ?"
                " AND s.conversation_id = e.conversation_id AND s.from_pos <= e.pos"
                " AND (s.to_pos IS NULL OR s.to_pos >= e.pos))"
                " ORDER BY e.pos LIMIT ?",
                (since, end, user, limit + 1),
            ).fetchall()
        nxt, more = rules.page_end([row[0] for row in rows], limit, end, head)
        return [row[1] for row in rows[:limit]], nxt, more

    def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> tuple[list[HistoryMessage], bool]:
        """Messages with ``seq < before``, oldest first, in their current state.

        Returns:
            The messages and whether nothing older exists.
        """
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (conversation_id, before if before is not None else 1 << 62, limit + 1),
            ).fetchall()
        end = len(rows) <= limit
        rows = rows[:limit]
        rows.reverse()
        return [_history_message(row) for row in rows], end

    def op_result(self, user: str, device: str, op_id: str) -> dict[str, Any] | None:
        """The recorded result of an operation, or None if the server never saw it."""
        with self._lock:
            row = self.conn.execute(
                "SELECT result FROM ops WHERE user = ? AND op_id = ? LIMIT 1",
                (user, op_id),
            ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def all_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every message of a conversation in ``seq`` order, current state, no authorization.

        Each dict has ``message_id``, ``conversation_id``, ``seq``, ``op_id``, ``sender``,
        ``device``, ``body``, ``ts_ms``, ``edited_ms`` and ``deleted``.
        """
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            ).fetchall()
        return [{**codec.encode_body(_history_message(row)), "device": row[9]} for row in rows]

    def all_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Every retained event after ``since`` in ``pos`` order, as decoded JSON objects."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT data FROM events WHERE pos > ? ORDER BY pos", (since,)
            ).fetchall()
        return [orjson.loads(row[0]) for row in rows]


class LogTx(LogReads):
    """Event log, message and operation writes, inside a write transaction."""

    def insert_event(
        self, pos: int, conversation_id: str, seq: int, kind: str, ts_ms: int, data: str
    ) -> None:
        """Write one event and move its conversation's ``last_seq``."""
        self.conn.execute(
            "INSERT INTO events (pos, conversation_id, seq, type, ts_ms, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (pos, conversation_id, seq, kind, ts_ms, data),
        )
        self.conn.execute(
            "UPDATE conversations SET last_seq = ? WHERE id = ?", (seq, conversation_id)
        )

    def last_seq(self, conversation_id: str) -> int:
        """The conversation's last ``seq``."""
        row = self.conn.execute(
            "SELECT last_seq FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        return int(row[0])

    def insert_message(self, row: MessageRow) -> None:
        """Store a new message."""
        self.conn.execute(
            "INSERT INTO messages (message_id, conversation_id, seq, op_id, sender, device,"
            " body, ts_ms, edited_ms, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.message_id,
                row.conversation_id,
                row.seq,
                row.op_id,
                row.sender,
                row.device,
                row.body,
                row.ts_ms,
                row.edited_ms,
                int(row.deleted),
            ),
        )

    def message(self, message_id: str) -> MessageRow | None:
        """A message's current state, or None."""
        row = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()
        if row is None:
            return None
        return MessageRow(
            message_id=row[0],
            conversation_id=row[1],
            seq=row[2],
            op_id=row[3],
            sender=row[4],
            body=row[5],
            ts_ms=row[6],
            edited_ms=row[7],
            deleted=bool(row[8]),
            device=row[9],
        )

    def edit_message(self, message_id: str, body: str, edited_ms: int) -> None:
        """Replace a message's body."""
        self.conn.execute(
            "UPDATE messages SET body = ?, edited_ms = ? WHERE message_id = ?",
            (body, edited_ms, message_id),
        )

    def delete_message(self, message_id: str) -> None:
        """Mark a message deleted and forget its body."""
        self.conn.execute(
            "UPDATE messages SET body = '', deleted = 1 WHERE message_id = ?", (message_id,)
        )

    def op_record(self, user: str, device: str, op_id: str) -> OpRecord | None:
        """The idempotency record of an operation, or None.

        An op id identifies one operation of one user whatever the device (issue 12): the
        record is found by ``(user, op_id)``; ``device`` is only kept beside it.
        """
        row = self.conn.execute(
            "SELECT kind, payload_hash, result FROM ops WHERE user = ? AND op_id = ? LIMIT 1",
            (user, op_id),
        ).fetchone()
        if row is None:
            return None
        result = codec.structure(orjson.loads(row[2]), OpResult, where="result")
        return OpRecord(kind=row[0], payload_hash=row[1], result=result)

    def record_op(self, user: str, device: str, op_id: str, record: OpRecord) -> None:
        """Write an operation's idempotency record."""
        self.conn.execute(
            "INSERT INTO ops (user, device, op_id, kind, payload_hash, result, ts_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                user,
                device,
                op_id,
                record.kind,
                record.payload_hash,
                orjson.dumps(codec.encode_op_result(record.result)).decode(),
                self.now_ms(),
            ),
        )

    def now_ms(self) -> int:  # pragma: no cover - provided by the transaction
        """Server time in ms."""
        raise NotImplementedError
