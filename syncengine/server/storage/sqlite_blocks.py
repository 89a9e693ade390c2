"""SQLite storage of block lists: who refuses to be added by whom (mixins of
:class:`~syncengine.server.storage.sqlite.SqliteStorage` and its transaction)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from syncengine.server.storage.sqlite_users import chunks

__all__ = ["BlockTables", "BlockTx"]


class BlockTables:
    """Reads and writes of the ``blocks`` table. Needs ``conn``, ``_lock``, ``now_ms``,
    ``_write``."""

    conn: sqlite3.Connection
    _lock: threading.RLock

    def now_ms(self) -> int:  # pragma: no cover - provided by the storage
        """Server time in ms."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:  # pragma: no cover - by the storage
        raise NotImplementedError

    def blocked_by(self, user: str) -> list[str]:
        """The users ``user`` has blocked, sorted."""
        with self._lock:
            return [
                row[0]
                for row in self.conn.execute(
                    "SELECT blocked FROM blocks WHERE user = ? ORDER BY blocked", (user,)
                )
            ]

    def set_blocked(self, user: str, other: str, blocked: bool) -> None:
        """Block (``blocked=True``) or unblock ``other`` for ``user``; idempotent."""
        with self._write():
            if blocked:
                self.conn.execute(
                    "INSERT INTO blocks (user, blocked, created_ms) VALUES (?, ?, ?)"
                    " ON CONFLICT (user, blocked) DO NOTHING",
                    (user, other, self.now_ms()),
                )
            else:
                self.conn.execute(
                    "DELETE FROM blocks WHERE user = ? AND blocked = ?", (user, other)
                )


class BlockTx:
    """The block list as a write transaction reads it (the lock is held)."""

    conn: sqlite3.Connection

    def blockers_of(self, actor: str, users: Sequence[str]) -> tuple[str, ...]:
        """Those of ``users`` who have blocked ``actor``, sorted."""
        found: set[str] = set()
        for chunk in chunks(list(users), 500):
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self.conn.execute(
                    f"SELECT user FROM blocks WHERE blocked = ? AND user IN ({marks})",
                    (actor, *chunk),
                )
            )
        return tuple(sorted(found))
