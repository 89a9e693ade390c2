"""SQLite storage of conversations, members (and their visibility spans) and read markers.

:class:`ConversationReads` is shared by the storage and its write transactions;
:class:`ConversationTx` adds the writes, which exist only inside a transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

from syncengine.protocol.bodies import ConversationSnapshot
from syncengine.server.storage.interface import ConversationRow

__all__ = ["ConversationReads", "ConversationTx"]


class ConversationReads:
    """Conversation reads. Needs ``conn`` and ``_lock``."""

    conn: sqlite3.Connection
    _lock: threading.RLock

    def members(self, conversation_id: str) -> tuple[str, ...]:
        """The conversation's members now, sorted (empty for an unknown conversation)."""
        with self._lock:
            return tuple(
                row[0]
                for row in self.conn.execute(
                    "SELECT user FROM members WHERE conversation_id = ? ORDER BY user",
                    (conversation_id,),
                )
            )

    def is_member(self, conversation_id: str, user: str) -> bool:
        """Whether ``user`` is a member of the conversation now."""
        with self._lock:
            row = self.conn.execute(
                "SELECT 1 FROM members WHERE conversation_id = ? AND user = ?",
                (conversation_id, user),
            ).fetchone()
        return row is not None

    def unknown_users(self, users: Iterable[str]) -> list[str]:
        """The names in ``users`` that have no account here, sorted."""
        names = sorted(set(users))
        with self._lock:
            known = {
                row[0]
                for row in self.conn.execute(
                    f"SELECT name FROM users WHERE name IN ({','.join('?' * len(names))})",
                    names,
                )
            }
        return [name for name in names if name not in known]

    def snapshot(self, conversation_id: str, viewer: str) -> ConversationSnapshot | None:
        """The conversation as ``viewer`` sees it (their read marker), or None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT c.id, c.title, c.last_seq, c.created_by, r.read_seq FROM conversations c"
                " LEFT JOIN reads r ON r.conversation_id = c.id AND r.user = ? WHERE c.id = ?",
                (viewer, conversation_id),
            ).fetchone()
            if row is None:
                return None
            return ConversationSnapshot(
                id=row[0],
                title=row[1],
                members=self.members(conversation_id),
                last_seq=row[2],
                created_by=row[3],
                read_seq=row[4] or 0,
            )

    def conversations_of(self, user: str) -> tuple[list[ConversationSnapshot], int]:
        """The conversations ``user`` is a member of now, and the head when they were read."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT c.id, c.title, c.last_seq, c.created_by, r.read_seq,"
                " (SELECT group_concat(m2.user, ',') FROM members m2"
                "  WHERE m2.conversation_id = c.id)"
                " FROM members m JOIN conversations c ON c.id = m.conversation_id"
                " LEFT JOIN reads r ON r.conversation_id = c.id AND r.user = m.user"
                " WHERE m.user = ? ORDER BY c.id",
                (user,),
            ).fetchall()
            head = self.head
        return [
            ConversationSnapshot(
                id=cid,
                title=title,
                members=tuple(sorted(names.split(","))) if names else (),
                last_seq=last_seq,
                created_by=created_by,
                read_seq=read_seq or 0,
            )
            for cid, title, last_seq, created_by, read_seq, names in rows
        ], head

    @property
    def head(self) -> int:  # pragma: no cover - provided by the storage
        """The position of the last committed event."""
        raise NotImplementedError

    def shared_users(self, user: str) -> list[str]:
        """Every user who shares a conversation with ``user`` (``user`` included), sorted."""
        with self._lock:
            return [
                row[0]
                for row in self.conn.execute(
                    "SELECT DISTINCT m2.user FROM members m1 JOIN members m2"
                    " ON m2.conversation_id = m1.conversation_id WHERE m1.user = ?"
                    " ORDER BY m2.user",
                    (user,),
                )
            ]

    def all_conversations(self) -> list[dict[str, Any]]:
        """Every conversation (``id``, ``title``, ``members``, ``last_seq``, ``created_by``)."""
        with self._lock:
            ids = [row[0] for row in self.conn.execute("SELECT id FROM conversations ORDER BY id")]
            out = []
            for cid in ids:
                snap = self.snapshot(cid, "")
                assert snap is not None
                out.append(
                    {
                        "id": snap.id,
                        "title": snap.title,
                        "members": list(snap.members),
                        "last_seq": snap.last_seq,
                        "created_by": snap.created_by,
                    }
                )
            return out


class ConversationTx(ConversationReads):
    """Conversation writes, inside a write transaction (the lock is held)."""

    def conversation(self, conversation_id: str) -> ConversationRow | None:
        """The stored conversation, or None."""
        row = self.conn.execute(
            "SELECT id, title, created_by, created_ms, created_pos, last_seq, origin"
            " FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            return None
        return ConversationRow(
            id=row[0],
            title=row[1],
            created_by=row[2],
            created_ms=row[3],
            created_pos=row[4],
            last_seq=row[5],
            origin=row[6],
        )

    def insert_conversation(self, row: ConversationRow, members: Iterable[str]) -> None:
        """Store a new conversation and its first members (visible from ``created_pos``)."""
        self.conn.execute(
            "INSERT INTO conversations (id, title, created_by, created_ms, created_pos,"
            " last_seq, origin) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.title,
                row.created_by,
                row.created_ms,
                row.created_pos,
                row.last_seq,
                row.origin,
            ),
        )
        names = list(members)
        self.conn.executemany(
            "INSERT INTO members (conversation_id, user) VALUES (?, ?)",
            [(row.id, m) for m in names],
        )
        self.conn.executemany(
            "INSERT INTO spans (conversation_id, user, from_pos) VALUES (?, ?, ?)",
            [(row.id, m, row.created_pos) for m in names],
        )

    def set_title(self, conversation_id: str, title: str) -> None:
        """Change the title."""
        self.conn.execute(
            "UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)
        )

    def add_member(self, conversation_id: str, user: str, from_pos: int) -> None:
        """Add a member; they see events from ``from_pos`` on."""
        self.conn.execute(
            "INSERT INTO members (conversation_id, user) VALUES (?, ?)", (conversation_id, user)
        )
        self.conn.execute(
            "INSERT INTO spans (conversation_id, user, from_pos) VALUES (?, ?, ?)",
            (conversation_id, user, from_pos),
        )

    def remove_member(self, conversation_id: str, user: str, to_pos: int) -> None:
        """Remove a member; they see events up to ``to_pos`` (the one that removes them)."""
        self.conn.execute(
            "DELETE FROM members WHERE conversation_id = ? AND user = ?", (conversation_id, user)
        )
        self.conn.execute(
            "UPDATE spans SET to_pos = ? WHERE conversation_id = ? AND user = ? AND to_pos IS NULL",
            (to_pos, conversation_id, user),
        )

    def read_seq(self, conversation_id: str, user: str) -> int:
        """``user``'s read marker (0 when never set)."""
        row = self.conn.execute(
            "SELECT read_seq FROM reads WHERE conversation_id = ? AND user = ?",
            (conversation_id, user),
        ).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def set_read_seq(self, conversation_id: str, user: str, seq: int) -> None:
        """Move ``user``'s read marker."""
        self.conn.execute(
            "INSERT INTO reads (conversation_id, user, read_seq) VALUES (?, ?, ?)"
            " ON CONFLICT (conversation_id, user) DO UPDATE SET read_seq = excluded.read_seq",
            (conversation_id, user, seq),
        )
