"""The reference server's SQLite storage: the only code of the server that touches SQLite.

One connection, one lock: every write is serialized, so the order of ``pos`` is the order of
commits, and the caller fans committed events out (after the commit, in ``pos`` order) before
it lets anyone else write. The schema is in
:mod:`~syncengine.server.storage.sqlite_schema`; each concern's SQL is in its own module
(users, conversations, the log); the hot paths use raw ``conn.execute`` inside one
transaction per request.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import sqlite_utils

from syncengine.paths import make_private_dirs
from syncengine.protocol import codec
from syncengine.protocol.events import DurableEvent
from syncengine.server.storage.interface import Committed
from syncengine.server.storage.sqlite_blocks import BlockTables, BlockTx
from syncengine.server.storage.sqlite_conversations import ConversationReads, ConversationTx
from syncengine.server.storage.sqlite_log import LogReads, LogTx
from syncengine.server.storage.sqlite_schema import create_schema
from syncengine.server.storage.sqlite_users import UserTables

__all__ = ["SqliteStorage", "SqliteTx"]


class SqliteTx(ConversationTx, LogTx, BlockTx):
    """One open write transaction of a :class:`SqliteStorage` (its lock is held).

    Attributes:
        committed: the events written so far, in ``pos`` order, to fan out after the commit.
    """

    def __init__(self, storage: SqliteStorage) -> None:
        self._storage = storage
        self.conn = storage.conn
        self._lock = storage._lock
        self.committed: list[Committed] = []

    @property
    def head(self) -> int:
        """The position of the last event written (this transaction's included)."""
        return self._storage._head

    @property
    def _head(self) -> int:  # type: ignore[override]
        return self._storage._head

    @property
    def _oldest(self) -> int:  # type: ignore[override]
        return self._storage._oldest

    def now_ms(self) -> int:
        """Server time in ms, never going backwards."""
        return self._storage.now_ms()

    def append(
        self,
        conversation_id: str,
        make: Callable[[int, int, int], DurableEvent],
        audience: Iterable[str],
    ) -> DurableEvent:
        """Append one event: the next ``pos``, the conversation's next ``seq``."""
        seq = self.last_seq(conversation_id) + 1
        pos = self._storage._head + 1
        ts = self.now_ms()
        event = make(pos, seq, ts)
        data = orjson.dumps(codec.encode_event(event)).decode()
        self.insert_event(pos, conversation_id, seq, event.type, ts, data)
        self._storage._head = pos
        self.committed.append(Committed(pos, conversation_id, data, frozenset(audience)))
        return event

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: on an exception, its writes, events and head are undone."""
        mark = len(self.committed)
        head = self._storage._head
        try:
            with self._storage.db.atomic():
                yield
        except BaseException:
            del self.committed[mark:]
            self._storage._head = head
            raise


class SqliteStorage(UserTables, BlockTables, ConversationReads, LogReads):
    """The server's database in one SQLite file. Thread-safe: every call holds one lock.

    Args:
        path: the database file (created 0600, with its directory, if missing).
        retention: keep only the last N events (``None`` keeps all).
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(
        self,
        path: Path,
        *,
        retention: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        make_private_dirs(path.parent)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self.retention = retention
        self._clock = clock
        self._lock = threading.RLock()
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10.0)
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=OFF")
        create_schema(conn, path)
        self._head = int(conn.execute("SELECT COALESCE(MAX(pos), 0) FROM events").fetchone()[0])
        self._oldest = self._meta("oldest_pos", 1)
        self._head = max(self._head, self._oldest - 1)
        self._last_ts = 0
        self.closed = False

    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    @property
    def clock(self) -> Callable[[], float]:
        """The clock (seconds since the epoch) that stamps ``ts_ms`` and new ids."""
        return self._clock

    @contextmanager
    def write(self) -> Iterator[SqliteTx]:
        """One write transaction; on an exception nothing is kept and the head is restored."""
        with self._lock:
            head = self._head
            tx = SqliteTx(self)
            try:
                with self.db.atomic():
                    yield tx
                    self._prune()
            except BaseException:
                self._head = head
                raise

    _write = write

    def now_ms(self) -> int:
        """Server time in ms, never going backwards (so ``ts_ms`` follows ``pos``)."""
        with self._lock:
            self._last_ts = max(self._last_ts, int(self._clock() * 1000))
            return self._last_ts

    def close(self) -> None:
        """Close the connection (a WAL checkpoint happens on close)."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self.conn.close()

    @property
    def head(self) -> int:
        """The position of the last committed event (0 when the log is empty)."""
        return self._head

    @property
    def oldest_pos(self) -> int:
        """The oldest position the log still serves."""
        return self._oldest

    def _prune(self) -> None:
        if self.retention is None or self._head - self.retention < self._oldest:
            return
        oldest = self._head - self.retention + 1
        self.conn.execute("DELETE FROM events WHERE pos < ?", (oldest,))
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('oldest_pos', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (oldest,),
        )
        self._oldest = oldest
