"""The reference server's PostgreSQL storage (psycopg 3): the same interface as SQLite,
shared by several server processes (nodes).

The event table is the truth. Every write that may append locks the one row of
``log_head`` (``SELECT ... FOR UPDATE``) at its start and writes the new head back before it
commits, so appends from every node are serialised by the database: positions are dense,
and the order of commits is the order of ``pos``. That is what makes a pull safe across
nodes: a reader that sees ``head = 11`` sees pos 10 too (a plain sequence would hand out 10
and 11 to two transactions that may commit in either order, and a pull could skip 10).
The same transaction sends ``NOTIFY syncengine_log`` with the new head (delivered on commit
only), which wakes the other nodes; see :mod:`syncengine.server.cluster`.

One connection per storage, in autocommit mode (each ``with conn.transaction()`` is one
``BEGIN … COMMIT``), behind one lock: the storage is thread-safe like the SQLite one.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg

from syncengine.protocol import codec
from syncengine.protocol.bodies import ConversationSnapshot, HistoryMessage, OpResult
from syncengine.protocol.events import DurableEvent
from syncengine.server import rules
from syncengine.server.storage.interface import (
    Committed,
    ConversationRow,
    Identity,
    MessageRow,
    OpRecord,
    PasswordRecord,
)
from syncengine.server.storage.postgres_schema import SCHEMA_LOCK, create_schema

# The epoch is begun under the schema lock: two nodes starting at once agree on one epoch.
_EPOCH_LOCK = SCHEMA_LOCK

__all__ = ["LOG_CHANNEL", "PostgresStorage", "PostgresTx", "is_postgres_url"]

#: The channel on which a commit that appended announces its new head (the payload is the
#: head as decimal text: a wake-up hint, never the event).
LOG_CHANNEL = "syncengine_log"

_MESSAGE_COLUMNS = (
    "message_id, conversation_id, seq, op_id, sender, body, ts_ms, edited_ms, deleted, device"
)


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return url.startswith(("postgresql://", "postgres://"))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


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


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    cred, at, host = rest.rpartition("@")
    if not at:
        return url
    user = cred.partition(":")[0]
    return f"{scheme}{sep}{user}@{host}"


class _Reads:
    """Reads shared by the storage and its transactions. Needs ``conn`` and ``_lock``."""

    conn: psycopg.Connection[Any]
    _lock: threading.RLock

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self.conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    # --- conversations -------------------------------------------------------------------

    def members(self, conversation_id: str) -> tuple[str, ...]:
        """The members now, sorted (empty for an unknown conversation)."""
        rows = self._all(
            "SELECT username FROM members WHERE conversation_id = %s ORDER BY username",
            (conversation_id,),
        )
        return tuple(row[0] for row in rows)

    def is_member(self, conversation_id: str, user: str) -> bool:
        """Whether ``user`` is a member now."""
        row = self._one(
            "SELECT 1 FROM members WHERE conversation_id = %s AND username = %s",
            (conversation_id, user),
        )
        return row is not None

    def unknown_users(self, users: Iterable[str]) -> list[str]:
        """The names in ``users`` that have no account here, sorted."""
        names = sorted(set(users))
        rows = self._all("SELECT name FROM users WHERE name = ANY(%s)", (names,))
        known = {row[0] for row in rows}
        return [name for name in names if name not in known]

    def blockers_of(self, actor: str, users: Sequence[str]) -> tuple[str, ...]:
        """Those of ``users`` who have blocked ``actor``, sorted."""
        if not users:
            return ()
        rows = self._all(
            "SELECT username FROM blocks WHERE blocked = %s AND username = ANY(%s)"
            " ORDER BY username",
            (actor, list(users)),
        )
        return tuple(row[0] for row in rows)

    def snapshot(self, conversation_id: str, viewer: str) -> ConversationSnapshot | None:
        """The conversation as ``viewer`` sees it (their read marker), or None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT c.id, c.title, c.last_seq, c.created_by, r.read_seq FROM conversations c"
                " LEFT JOIN reads r ON r.conversation_id = c.id AND r.username = %s"
                " WHERE c.id = %s",
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


class PostgresTx(_Reads):
    """One open write transaction of a :class:`PostgresStorage` (``log_head`` is locked).

    Attributes:
        committed: the events written so far, in ``pos`` order, to fan out after the commit.
    """

    def __init__(self, storage: PostgresStorage, head: int, last_ts: int) -> None:
        self._storage = storage
        self.conn = storage.conn
        self._lock = storage._lock
        self._head = head
        self._last_ts = last_ts
        self.committed: list[Committed] = []

    @property
    def head(self) -> int:
        """The position of the last event written (this transaction's included)."""
        return self._head

    def now_ms(self) -> int:
        """Server time in ms, never going backwards (nor behind any node's last event)."""
        self._last_ts = max(self._last_ts, self._storage.now_ms())
        return self._last_ts

    def append(
        self,
        conversation_id: str,
        make: Callable[[int, int, int], DurableEvent],
        audience: Iterable[str],
    ) -> DurableEvent:
        """Append one event: the next ``pos``, the conversation's next ``seq``."""
        row = self.conn.execute(
            "SELECT last_seq FROM conversations WHERE id = %s", (conversation_id,)
        ).fetchone()
        seq = int(row[0]) + 1
        pos = self._head + 1
        ts = self.now_ms()
        event = make(pos, seq, ts)
        data = orjson.dumps(codec.encode_event(event)).decode()
        self.conn.execute(
            "INSERT INTO events (pos, conversation_id, seq, type, ts_ms, data)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (pos, conversation_id, seq, event.type, ts, data),
        )
        self.conn.execute(
            "UPDATE conversations SET last_seq = %s WHERE id = %s", (seq, conversation_id)
        )
        self._head = pos
        self.committed.append(Committed(pos, conversation_id, data, frozenset(audience)))
        return event

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: on an exception, its writes, events and head are undone."""
        mark, head, last_ts = len(self.committed), self._head, self._last_ts
        try:
            with self.conn.transaction():
                yield
        except BaseException:
            del self.committed[mark:]
            self._head, self._last_ts = head, last_ts
            raise

    # --- conversations -------------------------------------------------------------------

    def conversation(self, conversation_id: str) -> ConversationRow | None:
        """The stored conversation, or None."""
        row = self.conn.execute(
            "SELECT id, title, created_by, created_ms, created_pos, last_seq, origin"
            " FROM conversations WHERE id = %s",
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
            " last_seq, origin) VALUES (%s, %s, %s, %s, %s, %s, %s)",
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
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO members (conversation_id, username) VALUES (%s, %s)",
                [(row.id, m) for m in names],
            )
            cur.executemany(
                "INSERT INTO spans (conversation_id, username, from_pos) VALUES (%s, %s, %s)",
                [(row.id, m, row.created_pos) for m in names],
            )

    def set_title(self, conversation_id: str, title: str) -> None:
        """Change the title."""
        self.conn.execute(
            "UPDATE conversations SET title = %s WHERE id = %s", (title, conversation_id)
        )

    def add_member(self, conversation_id: str, user: str, from_pos: int) -> None:
        """Add a member; they see events from ``from_pos`` on."""
        self.conn.execute(
            "INSERT INTO members (conversation_id, username) VALUES (%s, %s)",
            (conversation_id, user),
        )
        self.conn.execute(
            "INSERT INTO spans (conversation_id, username, from_pos) VALUES (%s, %s, %s)",
            (conversation_id, user, from_pos),
        )

    def remove_member(self, conversation_id: str, user: str, to_pos: int) -> None:
        """Remove a member; they see events up to ``to_pos`` (the one that removes them)."""
        self.conn.execute(
            "DELETE FROM members WHERE conversation_id = %s AND username = %s",
            (conversation_id, user),
        )
        self.conn.execute(
            "UPDATE spans SET to_pos = %s WHERE conversation_id = %s AND username = %s"
            " AND to_pos IS NULL",
            (to_pos, conversation_id, user),
        )

    def read_seq(self, conversation_id: str, user: str) -> int:
        """``user``'s read marker (0 when never set)."""
        row = self.conn.execute(
            "SELECT read_seq FROM reads WHERE conversation_id = %s AND username = %s",
            (conversation_id, user),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def set_read_seq(self, conversation_id: str, user: str, seq: int) -> None:
        """Move ``user``'s read marker."""
        self.conn.execute(
            "INSERT INTO reads (conversation_id, username, read_seq) VALUES (%s, %s, %s)"
            " ON CONFLICT (conversation_id, username) DO UPDATE SET read_seq = excluded.read_seq",
            (conversation_id, user, seq),
        )

    # --- messages and operation records --------------------------------------------------

    def insert_message(self, row: MessageRow) -> None:
        """Store a new message."""
        self.conn.execute(
            "INSERT INTO messages (message_id, conversation_id, seq, op_id, sender, device,"
            " body, ts_ms, edited_ms, deleted) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                row.deleted,
            ),
        )

    def message(self, message_id: str) -> MessageRow | None:
        """A message's current state, or None."""
        row = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = %s", (message_id,)
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
            "UPDATE messages SET body = %s, edited_ms = %s WHERE message_id = %s",
            (body, edited_ms, message_id),
        )

    def delete_message(self, message_id: str) -> None:
        """Mark a message deleted and forget its body."""
        self.conn.execute(
            "UPDATE messages SET body = '', deleted = TRUE WHERE message_id = %s", (message_id,)
        )

    def op_record(self, user: str, device: str, op_id: str) -> OpRecord | None:
        """The idempotency record of an operation, or None (found by ``(user, op_id)``:
        an op id identifies one operation of one user whatever the device)."""
        row = self.conn.execute(
            "SELECT kind, payload_hash, result FROM ops WHERE username = %s AND op_id = %s LIMIT 1",
            (user, op_id),
        ).fetchone()
        if row is None:
            return None
        result = codec.structure(orjson.loads(row[2]), OpResult, where="result")
        return OpRecord(kind=row[0], payload_hash=row[1], result=result)

    def record_op(self, user: str, device: str, op_id: str, record: OpRecord) -> None:
        """Write an operation's idempotency record (the primary key makes it unique)."""
        self.conn.execute(
            "INSERT INTO ops (username, device, op_id, kind, payload_hash, result, ts_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
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


class PostgresStorage(_Reads):
    """The server's database in PostgreSQL, shareable by several server processes.

    Args:
        url: ``postgresql://USER@HOST:PORT/DB`` (libpq's URL form; a password may be given
            there or by ``PGPASSWORD`` / ``~/.pgpass``).
        retention: keep only the last N events (``None`` keeps all).
        clock: seconds since the epoch (injectable for tests).

    Raises:
        RuntimeError: the database cannot be reached, or was written by a newer server.
    """

    def __init__(
        self,
        url: str,
        *,
        retention: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.retention = retention
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise RuntimeError(f"cannot connect to {_redact(url)}: {exc}") from None
        create_schema(self.conn, _redact(url))
        self._begin_epoch()
        self._last_ts = 0
        self.closed = False

    def _begin_epoch(self) -> None:
        """The log's epoch (see :func:`syncengine.server.rules.check_epoch`). Several nodes
        share one PostgreSQL log, so an epoch begins only with the database, not with each
        node: a database restored from a backup keeps its old epoch unless the operator
        begins a new one (documented in docs/operations.md)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_EPOCH_LOCK,))
            rows = self.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'epoch:%%'")
            chain = rules.epoch_chain({k: int(v) for k, v in rows.fetchall()})
            if not chain:
                epoch = secrets.token_hex(8)
                head = int(
                    self.conn.execute("SELECT head FROM log_head WHERE id = 1").fetchone()[0]
                )
                self.conn.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s)",
                    (rules.epoch_key(0, epoch), head),
                )
                chain = [(epoch, head)]
        self.epoch_chain = chain
        self.epoch = chain[-1][0]

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        """The clock (seconds since the epoch) that stamps ``ts_ms`` and new ids."""
        return self._clock

    def now_ms(self) -> int:
        """Server time in ms, never going backwards on this node (so ``ts_ms`` follows
        ``pos``; across nodes a write never stamps earlier than the last event)."""
        with self._lock:
            self._last_ts = max(self._last_ts, int(self._clock() * 1000))
            return self._last_ts

    @contextmanager
    def write(self) -> Iterator[PostgresTx]:
        """One write transaction, holding the log's head row: appends are serialised across
        every node, and pos order is commit order. On an exception nothing is kept."""
        with self._lock, self.conn.transaction():
            head, last_ts = self.conn.execute(
                "SELECT head, last_ts FROM log_head WHERE id = 1 FOR UPDATE"
            ).fetchone()
            tx = PostgresTx(self, int(head), int(last_ts))
            yield tx
            if tx.committed:
                self.conn.execute(
                    "UPDATE log_head SET head = %s, last_ts = %s WHERE id = 1",
                    (tx.head, tx._last_ts),
                )
                self._prune(tx.head)
                self.conn.execute("SELECT pg_notify(%s, %s)", (LOG_CHANNEL, str(tx.head)))

    def _prune(self, head: int) -> None:
        if self.retention is None:
            return
        oldest = head - self.retention + 1
        row = self.conn.execute("SELECT oldest FROM log_head WHERE id = 1").fetchone()
        if oldest <= row[0]:
            return
        self.conn.execute("DELETE FROM events WHERE pos < %s", (oldest,))
        self.conn.execute("UPDATE log_head SET oldest = %s WHERE id = 1", (oldest,))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self.conn.close()

    # --- users, devices, tokens ----------------------------------------------------------

    def password_record(self, user: str) -> PasswordRecord | None:
        """``(salt, hash, params)`` of a user, or None if the user does not exist."""
        row = self._one("SELECT salt, pw_hash, pw_params FROM users WHERE name = %s", (user,))
        return None if row is None else PasswordRecord(bytes(row[0]), bytes(row[1]), row[2])

    def create_user(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> bool:
        """Create a user; False when it already exists (another login, on any node, won)."""
        with self._lock:
            cur = self.conn.execute(
                "INSERT INTO users (name, salt, pw_hash, pw_params, created_ms)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
                (user, salt, pw_hash, params, self.now_ms()),
            )
            return cur.rowcount == 1

    def set_password(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> None:
        """Create a user or replace their password."""
        with self._lock:
            self.conn.execute(
                "INSERT INTO users (name, salt, pw_hash, pw_params, created_ms)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET"
                " salt = excluded.salt, pw_hash = excluded.pw_hash,"
                " pw_params = excluded.pw_params",
                (user, salt, pw_hash, params, self.now_ms()),
            )

    def issue_token(self, user: str, device: str, ttl_s: float) -> str:
        """Record the device's login and return a new random token (stored hashed): every
        node accepts it, since tokens live in the database."""
        token = secrets.token_urlsafe(32)
        now = self.now_ms()
        with self._lock, self.conn.transaction():
            self.conn.execute("DELETE FROM tokens WHERE expires_ms <= %s", (now,))
            self.conn.execute(
                "INSERT INTO tokens (token_hash, username, device, created_ms, expires_ms)"
                " VALUES (%s, %s, %s, %s, %s)",
                (_token_hash(token), user, device, now, now + int(ttl_s * 1000)),
            )
            self.conn.execute(
                "INSERT INTO devices (username, device, first_ms, last_ms)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (username, device) DO UPDATE SET last_ms = excluded.last_ms",
                (user, device, now, now),
            )
        return token

    def authenticate(self, token: str) -> Identity | None:
        """``(user, device, expires_ms)`` for a valid, unexpired token, else None."""
        row = self._one(
            "SELECT username, device, expires_ms FROM tokens WHERE token_hash = %s",
            (_token_hash(token),),
        )
        if row is None or row[2] <= self.now_ms():
            return None
        return Identity(row[0], row[1], row[2])

    def set_last_seen(self, user: str, ms: int) -> None:
        """Remember when a user was last connected (survives restarts)."""
        with self._lock:
            self.conn.execute("UPDATE users SET last_seen_ms = %s WHERE name = %s", (ms, user))

    def last_seen(self, users: Sequence[str]) -> dict[str, int | None]:
        """The stored ``last_seen_ms`` of each user (None when never seen or unknown)."""
        out: dict[str, int | None] = dict.fromkeys(users)
        if users:
            for name, seen in self._all(
                "SELECT name, last_seen_ms FROM users WHERE name = ANY(%s)", (list(users),)
            ):
                out[name] = seen
        return out

    def users(self) -> list[str]:
        """Every user name, sorted."""
        return [row[0] for row in self._all("SELECT name FROM users ORDER BY name")]

    def blocked_by(self, user: str) -> list[str]:
        """The users ``user`` has blocked, sorted."""
        rows = self._all("SELECT blocked FROM blocks WHERE username = %s ORDER BY blocked", (user,))
        return [row[0] for row in rows]

    def set_blocked(self, user: str, other: str, blocked: bool) -> None:
        """Block (``blocked=True``) or unblock ``other`` for ``user``; idempotent."""
        with self._lock:
            if blocked:
                self.conn.execute(
                    "INSERT INTO blocks (username, blocked, created_ms) VALUES (%s, %s, %s)"
                    " ON CONFLICT (username, blocked) DO NOTHING",
                    (user, other, self.now_ms()),
                )
            else:
                self.conn.execute(
                    "DELETE FROM blocks WHERE username = %s AND blocked = %s", (user, other)
                )

    def notify(self, channel: str, payload: str) -> None:
        """``NOTIFY channel, payload`` now (outside any write)."""
        with self._lock:
            self.conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def take_token(self, key: str, rate: float, burst: float) -> float:
        """Take one token from the shared bucket ``key`` (every node sees the same bucket).

        Returns:
            0.0 when allowed, else the seconds to wait until a token is available.
        """
        level = "LEAST(%(burst)s, b.tokens + (excluded.updated_s - b.updated_s) * %(rate)s)"
        row = self._one(
            "INSERT INTO rate_buckets AS b (key, tokens, updated_s, granted)"
            " VALUES (%(key)s, %(burst)s - 1, extract(epoch FROM clock_timestamp()), TRUE)"
            f" ON CONFLICT (key) DO UPDATE SET granted = {level} >= 1,"
            f" tokens = CASE WHEN {level} >= 1 THEN {level} - 1 ELSE {level} END,"
            " updated_s = GREATEST(b.updated_s, excluded.updated_s)"
            " RETURNING tokens, granted",
            {"key": key, "rate": float(rate), "burst": float(burst)},
        )
        tokens, granted = row
        return 0.0 if granted else (1.0 - float(tokens)) / rate

    def peek_token(self, key: str, rate: float, burst: float) -> float:
        """The seconds until the shared bucket ``key`` has a token (0.0: now); takes none."""
        row = self._one(
            "SELECT LEAST(%s, tokens + (extract(epoch FROM clock_timestamp()) - updated_s) * %s)"
            " FROM rate_buckets WHERE key = %s",
            (float(burst), float(rate), key),
        )
        if row is None or float(row[0]) >= 1.0:
            return 0.0
        return (1.0 - float(row[0])) / rate

    def forget_idle_buckets(self, idle_s: float) -> None:
        """Delete buckets untouched for ``idle_s`` seconds (they are full again)."""
        with self._lock:
            self.conn.execute(
                "DELETE FROM rate_buckets WHERE updated_s < extract(epoch FROM clock_timestamp())"
                " - %s",
                (idle_s,),
            )

    # --- conversations -------------------------------------------------------------------

    def conversations_of(self, user: str) -> tuple[list[ConversationSnapshot], int]:
        """The conversations ``user`` is a member of now, and the head when they were read."""
        with self._lock, self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            rows = self.conn.execute(
                "SELECT c.id, c.title, c.last_seq, c.created_by, r.read_seq,"
                " (SELECT array_agg(m2.username ORDER BY m2.username) FROM members m2"
                "  WHERE m2.conversation_id = c.id)"
                " FROM members m JOIN conversations c ON c.id = m.conversation_id"
                " LEFT JOIN reads r ON r.conversation_id = c.id AND r.username = m.username"
                " WHERE m.username = %s ORDER BY c.id",
                (user,),
            ).fetchall()
            head = self.conn.execute("SELECT head FROM log_head WHERE id = 1").fetchone()[0]
        return [
            ConversationSnapshot(
                id=cid,
                title=title,
                members=tuple(names or ()),
                last_seq=last_seq,
                created_by=created_by,
                read_seq=read_seq or 0,
            )
            for cid, title, last_seq, created_by, read_seq, names in rows
        ], int(head)

    def shared_users(self, user: str) -> list[str]:
        """Every user who shares a conversation with ``user`` (``user`` included), sorted."""
        rows = self._all(
            "SELECT DISTINCT m2.username FROM members m1 JOIN members m2"
            " ON m2.conversation_id = m1.conversation_id WHERE m1.username = %s"
            " ORDER BY m2.username",
            (user,),
        )
        return [row[0] for row in rows]

    def all_conversations(self) -> list[dict[str, Any]]:
        """Every conversation (``id``, ``title``, ``members``, ``last_seq``, ``created_by``)."""
        with self._lock:
            ids = [row[0] for row in self._all("SELECT id FROM conversations ORDER BY id")]
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

    # --- the event log -------------------------------------------------------------------

    @property
    def head(self) -> int:
        """The position of the last committed event, on any node (0 when the log is empty)."""
        return int(self._one("SELECT head FROM log_head WHERE id = 1")[0])

    @property
    def oldest_pos(self) -> int:
        """The oldest position the log still serves."""
        return int(self._one("SELECT oldest FROM log_head WHERE id = 1")[0])

    def pull(self, user: str, since: int, limit: int) -> tuple[list[str], int, bool]:
        """The events visible to ``user`` after ``since``, oldest first (one snapshot: the
        head and the events it covers are read together).

        Raises:
            CursorExpired: see :func:`syncengine.server.rules.check_cursor`.
        """
        with self._lock, self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            head, oldest = self.conn.execute(
                "SELECT head, oldest FROM log_head WHERE id = 1"
            ).fetchone()
            rules.check_cursor(since, oldest, head)
            end = rules.scan_end(since, head)
            rows = self.conn.execute(
                "SELECT e.pos, e.data FROM events e WHERE e.pos > %s AND e.pos <= %s"
                " AND EXISTS (SELECT 1 FROM spans s WHERE s.username = %s"
                " AND s.conversation_id = e.conversation_id AND s.from_pos <= e.pos"
                " AND (s.to_pos IS NULL OR s.to_pos >= e.pos))"
                " ORDER BY e.pos LIMIT %s",
                (since, end, user, limit + 1),
            ).fetchall()
        nxt, more = rules.page_end([row[0] for row in rows], limit, end, head)
        return [row[1] for row in rows[:limit]], nxt, more

    def committed_since(self, after: int, upto: int, limit: int = 1000) -> list[Committed]:
        """The committed events with ``after < pos <= upto`` (at most ``limit``), each with
        its audience (the users whose membership spans cover it): what a node fans out for
        events other nodes wrote."""
        rows = self._all(
            "SELECT e.pos, e.conversation_id, e.data,"
            " (SELECT array_agg(DISTINCT s.username) FROM spans s"
            "  WHERE s.conversation_id = e.conversation_id AND s.from_pos <= e.pos"
            "  AND (s.to_pos IS NULL OR s.to_pos >= e.pos))"
            " FROM events e WHERE e.pos > %s AND e.pos <= %s ORDER BY e.pos LIMIT %s",
            (after, upto, limit),
        )
        return [Committed(pos, cid, data, frozenset(names or ())) for pos, cid, data, names in rows]

    def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> tuple[list[HistoryMessage], bool]:
        """Messages with ``seq < before``, oldest first, and whether nothing older exists."""
        rows = self._all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = %s AND seq < %s"
            " ORDER BY seq DESC LIMIT %s",
            (conversation_id, before if before is not None else 1 << 62, limit + 1),
        )
        end = len(rows) <= limit
        rows = rows[:limit]
        rows.reverse()
        return [_history_message(row) for row in rows], end

    def op_result(self, user: str, device: str, op_id: str) -> dict[str, Any] | None:
        """The recorded result of an operation, or None if the server never saw it."""
        row = self._one(
            "SELECT result FROM ops WHERE username = %s AND op_id = %s LIMIT 1",
            (user, op_id),
        )
        return None if row is None else orjson.loads(row[0])

    def all_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every message of a conversation in ``seq`` order, current state, no authorization."""
        rows = self._all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = %s ORDER BY seq",
            (conversation_id,),
        )
        return [{**codec.encode_body(_history_message(row)), "device": row[9]} for row in rows]

    def all_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Every retained event after ``since`` in ``pos`` order, as decoded JSON objects."""
        rows = self._all("SELECT data FROM events WHERE pos > %s ORDER BY pos", (since,))
        return [orjson.loads(row[0]) for row in rows]
