"""The reference server's storage in memory: dictionaries, no database.

A third implementation of :class:`~syncengine.server.storage.interface.ServerStorage`,
beside SQLite and PostgreSQL, that passes the same contract suite
(``tests/test_storage_contract.py``). It lets the server's rules, writes and service run
without a file or a socket: the protocol pair tests (``tests/test_protocol_pair.py``) put the
client's sans-I/O protocol in front of it.

Transactions are an undo journal: every change of a write records how to take itself back;
a failed write (or savepoint) replays the journal backwards to its mark. One lock serializes
writes, so the order of ``pos`` is the order of commits, as in SQLite. What a reopen finds
is the :class:`MemoryDatabase` passed in (a new storage on the same database is a restart:
a new epoch, the same log); nothing survives the process.
"""

from __future__ import annotations

import bisect
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import orjson

from syncengine.protocol import codec
from syncengine.protocol.bodies import ConversationSnapshot, HistoryMessage
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

__all__ = ["MemoryDatabase", "MemoryStorage", "MemoryTx"]

_MISSING = object()


@attrs.define(eq=False)
class _User:
    salt: bytes
    pw_hash: bytes
    params: str
    created_ms: int
    last_seen_ms: int | None = None


@attrs.define(eq=False)
class MemoryDatabase:
    """Everything a :class:`MemoryStorage` keeps; what a reopen of the storage finds.

    Each table is a dict (the undo journal restores keys); a conversation's messages are
    kept in ``seq`` order as a list of ``(seq, message_id)``.
    """

    users: dict[str, _User] = attrs.Factory(dict)
    tokens: dict[str, Identity] = attrs.Factory(dict)  # token hash -> identity
    devices: dict[tuple[str, str], tuple[int, int]] = attrs.Factory(dict)  # first, last ms
    blocks: dict[tuple[str, str], int] = attrs.Factory(dict)  # (user, blocked) -> ms
    conversations: dict[str, ConversationRow] = attrs.Factory(dict)
    members: dict[str, frozenset[str]] = attrs.Factory(dict)
    # (conversation, user) -> membership spans [(from_pos, to_pos or None)]
    spans: dict[tuple[str, str], tuple[tuple[int, int | None], ...]] = attrs.Factory(dict)
    reads: dict[tuple[str, str], int] = attrs.Factory(dict)
    events: dict[int, tuple[str, str]] = attrs.Factory(dict)  # pos -> (conversation, JSON)
    messages: dict[str, MessageRow] = attrs.Factory(dict)
    by_conversation: dict[str, tuple[tuple[int, str], ...]] = attrs.Factory(dict)
    ops: dict[tuple[str, str], tuple[str, OpRecord, int]] = attrs.Factory(dict)
    meta: dict[str, int] = attrs.Factory(dict)  # head, oldest_pos, epoch:<n>:<id>


def token_hash(token: str) -> str:
    """The SHA-256 under which a token is kept (the token itself never is)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _history_message(row: MessageRow) -> HistoryMessage:
    return HistoryMessage(
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        seq=row.seq,
        op_id=row.op_id,
        sender=row.sender,
        body=row.body,
        ts_ms=row.ts_ms,
        edited_ms=row.edited_ms,
        deleted=row.deleted,
    )


class _Journal:
    """Undo records of the open write: ``(table, key, old value or _MISSING)``."""

    def __init__(self) -> None:
        self.entries: list[tuple[MutableMapping[Any, Any], Any, Any]] = []

    def set(self, table: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        self.entries.append((table, key, table.get(key, _MISSING)))
        table[key] = value

    def delete(self, table: MutableMapping[Any, Any], key: Any) -> None:
        if key in table:
            self.entries.append((table, key, table[key]))
            del table[key]

    def undo(self, mark: int) -> None:
        while len(self.entries) > mark:
            table, key, old = self.entries.pop()
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old


class _Reads:
    """Reads shared by the storage and its transactions. Needs ``db`` and ``_lock``."""

    db: MemoryDatabase
    _lock: threading.RLock

    # --- conversations ---------------------------------------------------------------------

    def members(self, conversation_id: str) -> tuple[str, ...]:
        """The members now, sorted (empty for an unknown conversation)."""
        with self._lock:
            return tuple(sorted(self.db.members.get(conversation_id, ())))

    def is_member(self, conversation_id: str, user: str) -> bool:
        """Whether ``user`` is a member of the conversation now."""
        with self._lock:
            return user in self.db.members.get(conversation_id, ())

    def snapshot(self, conversation_id: str, viewer: str) -> ConversationSnapshot | None:
        """The conversation as ``viewer`` sees it (their read marker), or None."""
        with self._lock:
            row = self.db.conversations.get(conversation_id)
            if row is None:
                return None
            return ConversationSnapshot(
                id=row.id,
                title=row.title,
                members=self.members(conversation_id),
                last_seq=row.last_seq,
                created_by=row.created_by,
                read_seq=self.db.reads.get((conversation_id, viewer), 0),
            )

    def conversations_of(self, user: str) -> tuple[list[ConversationSnapshot], int]:
        """The conversations ``user`` is a member of now, and the head they were read at."""
        with self._lock:
            ids = sorted(cid for cid, names in self.db.members.items() if user in names)
            snaps = [self.snapshot(cid, user) for cid in ids]
            return [s for s in snaps if s is not None], self.db.meta.get("head", 0)

    def shared_users(self, user: str) -> list[str]:
        """Every user who shares a conversation with ``user`` (``user`` included), sorted."""
        with self._lock:
            found: set[str] = set()
            for names in self.db.members.values():
                if user in names:
                    found.update(names)
            return sorted(found)

    def all_conversations(self) -> list[dict[str, Any]]:
        """Every conversation (``id``, ``title``, ``members``, ``last_seq``, ``created_by``)."""
        with self._lock:
            return [
                {
                    "id": row.id,
                    "title": row.title,
                    "members": list(self.members(cid)),
                    "last_seq": row.last_seq,
                    "created_by": row.created_by,
                }
                for cid, row in sorted(self.db.conversations.items())
            ]

    def unknown_users(self, users: Iterable[str]) -> list[str]:
        """The names in ``users`` that have no account here, sorted."""
        with self._lock:
            return sorted({name for name in users if name not in self.db.users})

    def blockers_of(self, actor: str, users: Sequence[str]) -> tuple[str, ...]:
        """Those of ``users`` who have blocked ``actor``, sorted."""
        with self._lock:
            return tuple(sorted({u for u in users if (u, actor) in self.db.blocks}))

    # --- the log ---------------------------------------------------------------------------

    def _sees(self, user: str, conversation_id: str, pos: int) -> bool:
        spans = self.db.spans.get((conversation_id, user), ())
        return any(start <= pos and (end is None or end >= pos) for start, end in spans)

    def pull(self, user: str, since: int, limit: int) -> tuple[list[str], int, bool]:
        """The events visible to ``user`` after ``since``, oldest first (see
        :meth:`~syncengine.server.storage.interface.LogStorage.pull`).

        Raises:
            CursorExpired: see :func:`syncengine.server.rules.check_cursor`.
        """
        with self._lock:
            head = self.db.meta.get("head", 0)
            rules.check_cursor(since, self.db.meta.get("oldest_pos", 1), head)
            end = rules.scan_end(since, head)
            found: list[tuple[int, str]] = []
            for pos in range(since + 1, end + 1):
                stored = self.db.events.get(pos)
                if stored is not None and self._sees(user, stored[0], pos):
                    found.append((pos, stored[1]))
                    if len(found) > limit:
                        break
        nxt, more = rules.page_end([pos for pos, _ in found], limit, end, head)
        return [data for _, data in found[:limit]], nxt, more

    def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> tuple[list[HistoryMessage], bool]:
        """Messages with ``seq < before``, oldest first, and whether nothing older exists."""
        with self._lock:
            listed = self.db.by_conversation.get(conversation_id, ())
            stop = len(listed) if before is None else bisect.bisect_left(listed, (before, ""))
            start = max(0, stop - limit)
            rows = [self.db.messages[mid] for _seq, mid in listed[start:stop]]
        return [_history_message(row) for row in rows], start == 0

    def op_result(self, user: str, device: str, op_id: str) -> dict[str, Any] | None:
        """The recorded result of an operation, or None if the server never saw it."""
        with self._lock:
            stored = self.db.ops.get((user, op_id))
        if stored is None:
            return None
        return dict(orjson.loads(orjson.dumps(codec.encode_op_result(stored[1].result))))

    def all_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every message of a conversation in ``seq`` order, with its device (an oracle)."""
        with self._lock:
            rows = [
                self.db.messages[mid]
                for _seq, mid in self.db.by_conversation.get(conversation_id, ())
            ]
        return [{**codec.encode_body(_history_message(row)), "device": row.device} for row in rows]

    def all_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Every retained event after ``since`` in ``pos`` order, decoded (an oracle)."""
        with self._lock:
            texts = [data for pos, (_c, data) in sorted(self.db.events.items()) if pos > since]
        return [orjson.loads(text) for text in texts]


class MemoryTx(_Reads):
    """One open write transaction of a :class:`MemoryStorage` (its lock is held).

    Attributes:
        committed: the events written so far, in ``pos`` order, to fan out after the commit.
    """

    def __init__(self, storage: MemoryStorage, journal: _Journal) -> None:
        self._storage = storage
        self.db = storage.db
        self._lock = storage._lock
        self._journal = journal
        self.committed: list[Committed] = []

    @property
    def head(self) -> int:
        """The position of the last event written (this transaction's included)."""
        return self.db.meta.get("head", 0)

    def now_ms(self) -> int:
        """Server time in ms, never going backwards."""
        return self._storage.now_ms()

    def _set(self, table: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        self._journal.set(table, key, value)

    # --- conversations ---------------------------------------------------------------------

    def conversation(self, conversation_id: str) -> ConversationRow | None:
        """The stored conversation, or None."""
        return self.db.conversations.get(conversation_id)

    def insert_conversation(self, row: ConversationRow, members: Iterable[str]) -> None:
        """Store a new conversation and its first members (visible from ``created_pos``)."""
        self._set(self.db.conversations, row.id, row)
        names = frozenset(members)
        self._set(self.db.members, row.id, names)
        for name in names:
            self._open_span(row.id, name, row.created_pos)

    def _open_span(self, conversation_id: str, user: str, from_pos: int) -> None:
        spans = self.db.spans.get((conversation_id, user), ())
        self._set(self.db.spans, (conversation_id, user), (*spans, (from_pos, None)))

    def set_title(self, conversation_id: str, title: str) -> None:
        """Change the title."""
        row = self.db.conversations[conversation_id]
        self._set(self.db.conversations, conversation_id, attrs.evolve(row, title=title))

    def add_member(self, conversation_id: str, user: str, from_pos: int) -> None:
        """Add a member; they see events from ``from_pos`` on."""
        names = self.db.members.get(conversation_id, frozenset())
        self._set(self.db.members, conversation_id, names | {user})
        self._open_span(conversation_id, user, from_pos)

    def remove_member(self, conversation_id: str, user: str, to_pos: int) -> None:
        """Remove a member; they see events up to ``to_pos`` (the one that removes them)."""
        names = self.db.members.get(conversation_id, frozenset())
        self._set(self.db.members, conversation_id, names - {user})
        spans = self.db.spans.get((conversation_id, user), ())
        closed = tuple((start, to_pos if end is None else end) for start, end in spans)
        self._set(self.db.spans, (conversation_id, user), closed)

    def read_seq(self, conversation_id: str, user: str) -> int:
        """``user``'s read marker (0 when never set)."""
        return self.db.reads.get((conversation_id, user), 0)

    def set_read_seq(self, conversation_id: str, user: str, seq: int) -> None:
        """Move ``user``'s read marker."""
        self._set(self.db.reads, (conversation_id, user), seq)

    # --- the log ---------------------------------------------------------------------------

    def append(
        self,
        conversation_id: str,
        make: Callable[[int, int, int], DurableEvent],
        audience: Iterable[str],
    ) -> DurableEvent:
        """Append one event: the next ``pos``, the conversation's next ``seq``."""
        row = self.db.conversations[conversation_id]
        pos, seq, ts = self.head + 1, row.last_seq + 1, self.now_ms()
        event = make(pos, seq, ts)
        data = orjson.dumps(codec.encode_event(event)).decode()
        self._set(self.db.events, pos, (conversation_id, data))
        self._set(self.db.conversations, conversation_id, attrs.evolve(row, last_seq=seq))
        self._set(self.db.meta, "head", pos)
        self.committed.append(Committed(pos, conversation_id, data, frozenset(audience)))
        return event

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: on an exception, its writes, events and head are undone."""
        mark, events = len(self._journal.entries), len(self.committed)
        try:
            yield
        except BaseException:
            self._journal.undo(mark)
            del self.committed[events:]
            raise

    def insert_message(self, row: MessageRow) -> None:
        """Store a new message."""
        self._set(self.db.messages, row.message_id, row)
        listed = self.db.by_conversation.get(row.conversation_id, ())
        entry = (row.seq, row.message_id)
        self._set(self.db.by_conversation, row.conversation_id, tuple(sorted((*listed, entry))))

    def message(self, message_id: str) -> MessageRow | None:
        """A message's current state, or None."""
        return self.db.messages.get(message_id)

    def edit_message(self, message_id: str, body: str, edited_ms: int) -> None:
        """Replace a message's body."""
        row = self.db.messages[message_id]
        self._set(self.db.messages, message_id, attrs.evolve(row, body=body, edited_ms=edited_ms))

    def delete_message(self, message_id: str) -> None:
        """Mark a message deleted and forget its body."""
        row = self.db.messages[message_id]
        self._set(self.db.messages, message_id, attrs.evolve(row, body="", deleted=True))

    def op_record(self, user: str, device: str, op_id: str) -> OpRecord | None:
        """The idempotency record of an operation, or None (found by ``(user, op_id)``:
        an op id names one operation of one user whatever the device)."""
        stored = self.db.ops.get((user, op_id))
        return None if stored is None else stored[1]

    def record_op(self, user: str, device: str, op_id: str, record: OpRecord) -> None:
        """Write an operation's idempotency record."""
        self._set(self.db.ops, (user, op_id), (device, record, self.now_ms()))

    # --- users (the storage's own writes run in a transaction too) -------------------------

    def put(self, table: MutableMapping[Any, Any], key: Any, value: Any) -> None:
        """Set ``table[key]`` (undone if the transaction fails)."""
        self._set(table, key, value)

    def drop(self, table: MutableMapping[Any, Any], key: Any) -> None:
        """Delete ``table[key]`` if present (undone if the transaction fails)."""
        self._journal.delete(table, key)


class MemoryStorage(_Reads):
    """The server's storage in memory. Thread-safe: every call holds one lock.

    Args:
        database: what to open (a new, empty one by default); a new storage on the same
            database is a restart (the same log, a new epoch).
        retention: keep only the last N events (``None`` keeps all).
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(
        self,
        database: MemoryDatabase | None = None,
        *,
        retention: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = database if database is not None else MemoryDatabase()
        self.retention = retention
        self._clock = clock
        self._lock = threading.RLock()
        self._journal: _Journal | None = None
        self._last_ts = 0
        self.closed = False
        meta = self.db.meta
        meta.setdefault("oldest_pos", 1)
        meta["head"] = max(meta.get("head", 0), meta["oldest_pos"] - 1)
        # Every opening begins a new epoch of the log (see rules.check_epoch).
        chain = rules.epoch_chain(meta)
        epoch = secrets.token_hex(8)
        meta[rules.epoch_key(len(chain), epoch)] = meta["head"]
        self.epoch_chain: list[tuple[str, int]] = [*chain, (epoch, meta["head"])]
        self.epoch = epoch

    @property
    def clock(self) -> Callable[[], float]:
        """The clock (seconds since the epoch) that stamps ``ts_ms`` and new ids."""
        return self._clock

    @property
    def head(self) -> int:
        """The position of the last committed event (0 when the log is empty)."""
        return self.db.meta.get("head", 0)

    @property
    def oldest_pos(self) -> int:
        """The oldest position the log still serves."""
        return self.db.meta.get("oldest_pos", 1)

    def now_ms(self) -> int:
        """Server time in ms, never going backwards (so ``ts_ms`` follows ``pos``)."""
        with self._lock:
            self._last_ts = max(self._last_ts, int(self._clock() * 1000))
            return self._last_ts

    @contextmanager
    def write(self) -> Iterator[MemoryTx]:
        """One write transaction; on an exception nothing is kept (a write opened inside
        another one is a savepoint of it)."""
        with self._lock:
            outer = self._journal
            journal = outer if outer is not None else _Journal()
            mark = len(journal.entries)
            self._journal = journal
            tx = MemoryTx(self, journal)
            try:
                yield tx
                self._prune(tx)
            except BaseException:
                journal.undo(mark)
                raise
            finally:
                self._journal = outer

    def close(self) -> None:
        """Mark the storage closed (its database stays, for a reopen)."""
        self.closed = True

    def _prune(self, tx: MemoryTx) -> None:
        head, oldest = self.head, self.oldest_pos
        if self.retention is None or head - self.retention < oldest:
            return
        new_oldest = head - self.retention + 1
        for pos in range(oldest, new_oldest):
            tx.drop(self.db.events, pos)
        tx.put(self.db.meta, "oldest_pos", new_oldest)

    # --- users, devices, tokens, blocks ----------------------------------------------------

    def password_record(self, user: str) -> PasswordRecord | None:
        """The user's password hash, or None if the user does not exist."""
        with self._lock:
            found = self.db.users.get(user)
        return None if found is None else PasswordRecord(found.salt, found.pw_hash, found.params)

    def create_user(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> bool:
        """Create a user; False when it already exists (another login won the race)."""
        with self.write() as tx:
            if user in self.db.users:
                return False
            tx.put(self.db.users, user, _User(salt, pw_hash, params, self.now_ms()))
        return True

    def set_password(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> None:
        """Create a user or replace their password."""
        with self.write() as tx:
            old = self.db.users.get(user)
            created = self.now_ms() if old is None else old.created_ms
            seen = None if old is None else old.last_seen_ms
            tx.put(self.db.users, user, _User(salt, pw_hash, params, created, seen))

    def issue_token(self, user: str, device: str, ttl_s: float) -> str:
        """Record the device's login and return a new random token (kept hashed)."""
        token = secrets.token_urlsafe(32)
        now = self.now_ms()
        with self.write() as tx:
            for key, identity in list(self.db.tokens.items()):
                if identity.expires_ms <= now:
                    tx.drop(self.db.tokens, key)
            tx.put(
                self.db.tokens, token_hash(token), Identity(user, device, now + int(ttl_s * 1000))
            )
            first, _last = self.db.devices.get((user, device), (now, now))
            tx.put(self.db.devices, (user, device), (first, now))
        return token

    def authenticate(self, token: str) -> Identity | None:
        """The identity of a valid, unexpired token, else None."""
        with self._lock:
            identity = self.db.tokens.get(token_hash(token))
        if identity is None or identity.expires_ms <= self.now_ms():
            return None
        return identity

    def set_last_seen(self, user: str, ms: int) -> None:
        """Remember when a user was last connected (survives a reopen)."""
        with self.write() as tx:
            found = self.db.users.get(user)
            if found is not None:
                tx.put(self.db.users, user, attrs.evolve(found, last_seen_ms=ms))

    def last_seen(self, users: Sequence[str]) -> dict[str, int | None]:
        """The stored ``last_seen_ms`` of each user (None when never seen or unknown)."""
        with self._lock:
            return {
                name: (None if (found := self.db.users.get(name)) is None else found.last_seen_ms)
                for name in users
            }

    def users(self) -> list[str]:
        """Every user name, sorted."""
        with self._lock:
            return sorted(self.db.users)

    def blocked_by(self, user: str) -> list[str]:
        """The users ``user`` has blocked, sorted."""
        with self._lock:
            return sorted(other for who, other in self.db.blocks if who == user)

    def set_blocked(self, user: str, other: str, blocked: bool) -> None:
        """Block (``blocked=True``) or unblock ``other`` for ``user``; idempotent."""
        with self.write() as tx:
            if not blocked:
                tx.drop(self.db.blocks, (user, other))
            elif (user, other) not in self.db.blocks:
                tx.put(self.db.blocks, (user, other), self.now_ms())
