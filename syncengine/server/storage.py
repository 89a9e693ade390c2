"""The reference server's SQLite storage: the only code of the server that touches SQLite.

One connection, one lock: every write is serialized, so the order of ``pos`` is the order of
commits, and the caller fans committed events out (after the commit, in ``pos`` order) before
it lets anyone else write. The schema is created with sqlite-utils; the hot paths use raw
``conn.execute`` inside one transaction per request.

Tables::

    users          name → scrypt salt, hash and parameters, last_seen_ms
    devices        (user, device) → first and last login
    tokens         SHA-256 of the token → user, device, expiry (the token itself is not kept)
    conversations  id → title, creator, last_seq, created_pos, origin (creation payload hash)
    members        (conversation_id, user): the members now
    spans          (conversation_id, user, from_pos, to_pos): when each user was a member;
                   an event is visible to a user when its pos falls in one of their spans
    events         pos (global, INTEGER PRIMARY KEY) → conversation_id, seq (dense per
                   conversation), type, ts_ms, the event's JSON
    messages       message_id → current state (body, edited_ms, deleted) for history
    ops            (user, device, op_id) → kind, payload hash, result JSON: idempotency,
                   written in the same transaction as the operation's effect
    reads          (conversation_id, user) → read_seq
    meta           oldest_pos (the oldest position the log still serves)
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson
import sqlite_utils

from syncengine import wire
from syncengine.events import (
    ConversationUpdated,
    DurableEvent,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
)
from syncengine.models import new_id
from syncengine.server import state
from syncengine.server.state import ApiError

__all__ = ["SCHEMA_VERSION", "Committed", "Storage"]

SCHEMA_VERSION = 1


@attrs.frozen
class Committed:
    """A durable event that was committed, with the users allowed to see it.

    Attributes:
        pos: its stream position.
        conversation_id: its conversation.
        data: its JSON text, as stored and as sent.
        audience: the users it is delivered to (the members after the event, plus a user
            the event removes).
    """

    pos: int
    conversation_id: str
    data: str
    audience: frozenset[str]


@attrs.define
class _Tx:
    """What one write transaction produced, to fan out after it commits."""

    committed: list[Committed] = attrs.field(factory=list)


def _not_found(what: str = "conversation") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


class Storage:
    """The server's database. Thread-safe: every call holds one lock.

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
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        self._create_schema()
        self._head = int(conn.execute("SELECT COALESCE(MAX(pos), 0) FROM events").fetchone()[0])
        self._oldest = self._meta("oldest_pos", 1)
        self._head = max(self._head, self._oldest - 1)
        self._last_ts = 0
        self.closed = False

    # --- schema ------------------------------------------------------------------------

    def _create_schema(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} was written by a newer server (schema {version} > "
                f"{SCHEMA_VERSION}); refusing to touch it"
            )
        db = self.db
        with db.atomic():
            db.table("users").create(
                {
                    "name": str,
                    "salt": bytes,
                    "pw_hash": bytes,
                    "pw_params": str,
                    "created_ms": int,
                    "last_seen_ms": int,
                },
                pk="name",
                not_null={"salt", "pw_hash", "pw_params", "created_ms"},
                if_not_exists=True,
            )
            db.table("devices").create(
                {"user": str, "device": str, "first_ms": int, "last_ms": int},
                pk=("user", "device"),
                if_not_exists=True,
            )
            db.table("tokens").create(
                {
                    "token_hash": str,
                    "user": str,
                    "device": str,
                    "created_ms": int,
                    "expires_ms": int,
                },
                pk="token_hash",
                not_null={"user", "device", "created_ms", "expires_ms"},
                if_not_exists=True,
            )
            db.table("conversations").create(
                {
                    "id": str,
                    "title": str,
                    "created_by": str,
                    "created_ms": int,
                    "created_pos": int,
                    "last_seq": int,
                    "origin": str,
                },
                pk="id",
                not_null={"title", "created_by", "created_ms", "created_pos", "last_seq", "origin"},
                if_not_exists=True,
            )
            db.table("members").create(
                {"conversation_id": str, "user": str},
                pk=("conversation_id", "user"),
                if_not_exists=True,
            )
            db.table("members").create_index(["user"], if_not_exists=True)
            db.table("spans").create(
                {"conversation_id": str, "user": str, "from_pos": int, "to_pos": int},
                not_null={"conversation_id", "user", "from_pos"},
                if_not_exists=True,
            )
            db.table("spans").create_index(["user", "conversation_id"], if_not_exists=True)
            db.table("events").create(
                {
                    "pos": int,
                    "conversation_id": str,
                    "seq": int,
                    "type": str,
                    "ts_ms": int,
                    "data": str,
                },
                pk="pos",
                not_null={"conversation_id", "seq", "type", "ts_ms", "data"},
                if_not_exists=True,
            )
            db.table("events").create_index(
                ["conversation_id", "seq"], unique=True, if_not_exists=True
            )
            db.table("messages").create(
                {
                    "message_id": str,
                    "conversation_id": str,
                    "seq": int,
                    "op_id": str,
                    "sender": str,
                    "device": str,
                    "body": str,
                    "ts_ms": int,
                    "edited_ms": int,
                    "deleted": int,
                },
                pk="message_id",
                not_null={"conversation_id", "seq", "sender", "body", "ts_ms", "deleted"},
                if_not_exists=True,
            )
            db.table("messages").create_index(
                ["conversation_id", "seq"], unique=True, if_not_exists=True
            )
            db.table("ops").create(
                {
                    "user": str,
                    "device": str,
                    "op_id": str,
                    "kind": str,
                    "payload_hash": str,
                    "result": str,
                    "ts_ms": int,
                },
                pk=("user", "device", "op_id"),
                not_null={"kind", "payload_hash", "result", "ts_ms"},
                if_not_exists=True,
            )
            db.table("reads").create(
                {"conversation_id": str, "user": str, "read_seq": int},
                pk=("conversation_id", "user"),
                if_not_exists=True,
            )
            db.table("meta").create({"key": str, "value": int}, pk="key", if_not_exists=True)
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _meta(self, key: str, default: int) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else int(row[0])

    # --- plumbing ----------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One write transaction; on error nothing is kept and the head is restored."""
        with self._lock:
            head = self._head
            tx = _Tx()
            try:
                with self.db.atomic():
                    yield tx
                    self._prune()
            except BaseException:
                self._head = head
                raise

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

    def _append(
        self,
        tx: _Tx,
        conversation_id: str,
        make: Callable[[int, int, int], DurableEvent],
        audience: Iterable[str],
    ) -> DurableEvent:
        """Append one event: the next ``pos``, the conversation's next ``seq``."""
        seq = (
            1
            + self.conn.execute(
                "SELECT last_seq FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()[0]
        )
        pos = self._head + 1
        ts = self.now_ms()
        event = make(pos, seq, ts)
        data = orjson.dumps(wire.encode_event(event)).decode()
        self.conn.execute(
            "INSERT INTO events (pos, conversation_id, seq, type, ts_ms, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (pos, conversation_id, seq, event.type, ts, data),
        )
        self.conn.execute(
            "UPDATE conversations SET last_seq = ? WHERE id = ?", (seq, conversation_id)
        )
        self._head = pos
        tx.committed.append(Committed(pos, conversation_id, data, frozenset(audience)))
        return event

    def _announce(
        self, tx: _Tx, actor: str, conversation_id: str, extra: Iterable[str] = ()
    ) -> DurableEvent:
        """Append a ``conversation_updated`` with the conversation's state after a change.

        Args:
            tx: the open transaction.
            actor: who made the change.
            conversation_id: the conversation.
            extra: users who see this event besides the members (a removed user).
        """
        title = self.conn.execute(
            "SELECT title FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()[0]
        members = self._members(conversation_id)
        return self._append(
            tx,
            conversation_id,
            lambda p, s, t: ConversationUpdated(
                pos=p,
                conversation_id=conversation_id,
                seq=s,
                ts_ms=t,
                title=title,
                members=members,
                actor=actor,
            ),
            {*members, *extra},
        )

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

    # --- users, devices, tokens ---------------------------------------------------------

    def password_record(self, user: str) -> tuple[bytes, bytes, str] | None:
        """``(salt, hash, params)`` of a user, or None if the user does not exist."""
        with self._lock:
            row = self.conn.execute(
                "SELECT salt, pw_hash, pw_params FROM users WHERE name = ?", (user,)
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def create_user(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> bool:
        """Create a user; False when it already exists (another login won the race)."""
        with self._write():
            cursor = self.conn.execute(
                "INSERT INTO users (name, salt, pw_hash, pw_params, created_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (user, salt, pw_hash, params, self.now_ms()),
            )
        return cursor.rowcount == 1

    def set_password(self, user: str, salt: bytes, pw_hash: bytes, params: str) -> None:
        """Create a user or replace their password."""
        with self._write():
            self.conn.execute(
                "INSERT INTO users (name, salt, pw_hash, pw_params, created_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET salt = excluded.salt,"
                " pw_hash = excluded.pw_hash, pw_params = excluded.pw_params",
                (user, salt, pw_hash, params, self.now_ms()),
            )

    def issue_token(self, user: str, device: str, ttl_s: float) -> str:
        """Record the device's login and return a new random token (stored hashed)."""
        token = secrets.token_urlsafe(32)
        now = self.now_ms()
        with self._write():
            self.conn.execute("DELETE FROM tokens WHERE expires_ms <= ?", (now,))
            self.conn.execute(
                "INSERT INTO tokens (token_hash, user, device, created_ms, expires_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (_token_hash(token), user, device, now, now + int(ttl_s * 1000)),
            )
            self.conn.execute(
                "INSERT INTO devices (user, device, first_ms, last_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user, device) DO UPDATE SET last_ms = excluded.last_ms",
                (user, device, now, now),
            )
        return token

    def authenticate(self, token: str) -> tuple[str, str, int] | None:
        """``(user, device, expires_ms)`` for a valid, unexpired token, else None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT user, device, expires_ms FROM tokens WHERE token_hash = ?",
                (_token_hash(token),),
            ).fetchone()
        if row is None or row[2] <= self.now_ms():
            return None
        return row[0], row[1], row[2]

    def set_last_seen(self, user: str, ms: int) -> None:
        """Remember when a user was last connected (survives restarts)."""
        with self._write():
            self.conn.execute("UPDATE users SET last_seen_ms = ? WHERE name = ?", (ms, user))

    def last_seen(self, users: Sequence[str]) -> dict[str, int | None]:
        """The stored ``last_seen_ms`` of each user (None when never seen or unknown)."""
        out: dict[str, int | None] = dict.fromkeys(users)
        with self._lock:
            for chunk in _chunks(users, 500):
                marks = ",".join("?" * len(chunk))
                for name, seen in self.conn.execute(
                    f"SELECT name, last_seen_ms FROM users WHERE name IN ({marks})", chunk
                ):
                    out[name] = seen
        return out

    # --- conversations -------------------------------------------------------------------

    def _members(self, conversation_id: str) -> tuple[str, ...]:
        return tuple(
            row[0]
            for row in self.conn.execute(
                "SELECT user FROM members WHERE conversation_id = ? ORDER BY user",
                (conversation_id,),
            )
        )

    def _is_member(self, conversation_id: str, user: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM members WHERE conversation_id = ? AND user = ?",
                (conversation_id, user),
            ).fetchone()
            is not None
        )

    def is_member(self, conversation_id: str, user: str) -> bool:
        """Whether ``user`` is a member of the conversation now."""
        with self._lock:
            return self._is_member(conversation_id, user)

    def members(self, conversation_id: str) -> tuple[str, ...]:
        """The conversation's members now, sorted (empty for an unknown conversation)."""
        with self._lock:
            return self._members(conversation_id)

    def _conversation(self, conversation_id: str, viewer: str) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT c.id, c.title, c.last_seq, c.created_by, r.read_seq FROM conversations c"
            " LEFT JOIN reads r ON r.conversation_id = c.id AND r.user = ? WHERE c.id = ?",
            (viewer, conversation_id),
        ).fetchone()
        return {
            "id": row[0],
            "title": row[1],
            "members": list(self._members(conversation_id)),
            "last_seq": row[2],
            "created_by": row[3],
            "read_seq": row[4] or 0,
        }

    def _require_member(self, conversation_id: str, user: str) -> None:
        if not self._is_member(conversation_id, user):
            raise _not_found()

    def conversation(self, conversation_id: str, viewer: str) -> dict[str, Any]:
        """A conversation as the wire shows it to ``viewer``.

        Raises:
            ApiError: 404 when it does not exist or ``viewer`` is not a member.
        """
        with self._lock:
            self._require_member(conversation_id, viewer)
            return self._conversation(conversation_id, viewer)

    def conversations_of(self, user: str) -> tuple[list[dict[str, Any]], int]:
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
            head = self._head
        return [
            {
                "id": cid,
                "title": title,
                "members": sorted(names.split(",")) if names else [],
                "last_seq": last_seq,
                "created_by": created_by,
                "read_seq": read_seq or 0,
            }
            for cid, title, last_seq, created_by, read_seq, names in rows
        ], head

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

    def create_conversation(
        self, actor: str, conversation_id: str, title: str, members: tuple[str, ...]
    ) -> tuple[dict[str, Any], list[Committed], bool]:
        """Create a conversation (REST). Idempotent for the same creator and payload.

        Returns:
            The conversation, the committed events, and whether it was created now.

        Raises:
            ApiError: 409 ``conflict`` when the id is taken by another creation.
        """
        with self._write() as tx:
            created, _pos, _ts = self._create_conversation(
                tx, actor, conversation_id, title, members
            )
            conv = self._conversation(conversation_id, actor)
        return conv, tx.committed, created

    def _create_conversation(
        self, tx: _Tx, actor: str, conversation_id: str, title: str, members: tuple[str, ...]
    ) -> tuple[bool, int, int]:
        """Create a conversation unless the same creation happened before.

        Returns:
            Whether it was created now, and the ``pos`` and ``ts_ms`` of its creation.
        """
        origin = hashlib.sha256(orjson.dumps([actor, title, list(members)])).hexdigest()
        row = self.conn.execute(
            "SELECT origin, created_pos, created_ms FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is not None:
            if row[0] != origin:
                raise ApiError(409, "conflict", "conversation id already taken")
            if not self._is_member(conversation_id, actor):
                raise _not_found()
            return False, row[1], row[2]
        pos = self._head + 1
        ts = self.now_ms()
        self.conn.execute(
            "INSERT INTO conversations (id, title, created_by, created_ms, created_pos,"
            " last_seq, origin) VALUES (?, ?, ?, ?, ?, 0, ?)",
            (conversation_id, title, actor, ts, pos, origin),
        )
        self.conn.executemany(
            "INSERT INTO members (conversation_id, user) VALUES (?, ?)",
            [(conversation_id, m) for m in members],
        )
        self.conn.executemany(
            "INSERT INTO spans (conversation_id, user, from_pos) VALUES (?, ?, ?)",
            [(conversation_id, m, pos) for m in members],
        )
        event = self._announce(tx, actor, conversation_id)
        return True, event.pos, event.ts_ms

    def rename(
        self, actor: str, conversation_id: str, title: str
    ) -> tuple[dict[str, Any], list[Committed]]:
        """Change a conversation's title (no event when it is unchanged).

        Raises:
            ApiError: 404 for a non-member.
        """
        with self._write() as tx:
            self._require_member(conversation_id, actor)
            old = self.conn.execute(
                "SELECT title FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()[0]
            if old != title:
                self.conn.execute(
                    "UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id)
                )
                self._announce(tx, actor, conversation_id)
            conv = self._conversation(conversation_id, actor)
        return conv, tx.committed

    def set_member(
        self, actor: str, conversation_id: str, user: str, *, present: bool
    ) -> tuple[dict[str, Any], list[Committed]]:
        """Add (``present=True``) or remove a member; no event when nothing changes.

        The removed user is in the audience of the event that removes them, and in no later
        one.

        Raises:
            ApiError: 404 when ``actor`` is not a member.
        """
        with self._write() as tx:
            self._require_member(conversation_id, actor)
            if self._is_member(conversation_id, user) != present:
                pos = self._head + 1
                if present:
                    self.conn.execute(
                        "INSERT INTO members (conversation_id, user) VALUES (?, ?)",
                        (conversation_id, user),
                    )
                    self.conn.execute(
                        "INSERT INTO spans (conversation_id, user, from_pos) VALUES (?, ?, ?)",
                        (conversation_id, user, pos),
                    )
                else:
                    self.conn.execute(
                        "DELETE FROM members WHERE conversation_id = ? AND user = ?",
                        (conversation_id, user),
                    )
                    self.conn.execute(
                        "UPDATE spans SET to_pos = ? WHERE conversation_id = ? AND user = ?"
                        " AND to_pos IS NULL",
                        (pos, conversation_id, user),
                    )
                self._announce(tx, actor, conversation_id, extra=(user,))
            conv = self._conversation(conversation_id, actor)
        return conv, tx.committed

    # --- operations --------------------------------------------------------------------

    def apply_ops(
        self, user: str, device: str, raw_ops: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[Committed]]:
        """Apply a batch of operations in order, in one transaction.

        Each operation's idempotency record is written in the same transaction as its effect.
        A replay returns the original result as ``duplicate``; the same op id with another
        payload is rejected with ``op_id_conflict`` (and not recorded).

        Returns:
            One result per operation, and the committed events in ``pos`` order.
        """
        results: list[dict[str, Any]] = []
        with self._write() as tx:
            for raw in raw_ops:
                results.append(self._apply_one(tx, user, device, raw))
        return results, tx.committed

    def _apply_one(self, tx: _Tx, user: str, device: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        op_id = str(raw["op_id"])
        digest = state.payload_hash(raw)
        row = self.conn.execute(
            "SELECT payload_hash, result FROM ops WHERE user = ? AND device = ? AND op_id = ?",
            (user, device, op_id),
        ).fetchone()
        if row is not None:
            if row[0] != digest:
                return _rejected(
                    op_id,
                    ApiError(422, "op_id_conflict", "op id already used with another payload"),
                )
            original: dict[str, Any] = orjson.loads(row[1])
            if original["status"] == "applied":
                original["status"] = "duplicate"
            return original
        kind = str(raw.get("kind"))
        mark = len(tx.committed)
        head = self._head
        try:
            with self.db.atomic():
                op = state.parse_op(raw, user)
                result = self._effect(tx, user, device, op)
        except ApiError as exc:
            del tx.committed[mark:]
            self._head = head
            result = _rejected(op_id, exc)
        self.conn.execute(
            "INSERT INTO ops (user, device, op_id, kind, payload_hash, result, ts_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user, device, op_id, kind, digest, orjson.dumps(result).decode(), self.now_ms()),
        )
        return result

    def _effect(self, tx: _Tx, user: str, device: str, op: state.Op) -> dict[str, Any]:
        if isinstance(op, state.CreateConversationOp):
            _created, pos, ts = self._create_conversation(
                tx, user, op.conversation_id, op.title, op.members
            )
            return _applied(op.op_id, op.conversation_id, None, 1, pos, ts)
        self._require_member(op.conversation_id, user)
        members = self._members(op.conversation_id)
        cid = op.conversation_id
        if isinstance(op, state.SendOp):
            message_id = new_id(self._clock())
            event = self._append(
                tx,
                cid,
                lambda p, s, t: MessageReceived(
                    pos=p,
                    conversation_id=cid,
                    seq=s,
                    ts_ms=t,
                    message_id=message_id,
                    op_id=op.op_id,
                    sender=user,
                    body=op.body,
                ),
                members,
            )
            self.conn.execute(
                "INSERT INTO messages (message_id, conversation_id, seq, op_id, sender, device,"
                " body, ts_ms, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (message_id, cid, event.seq, op.op_id, user, device, op.body, event.ts_ms),
            )
            return _applied(op.op_id, cid, message_id, event.seq, event.pos, event.ts_ms)
        if isinstance(op, state.MarkReadOp):
            return self._mark_read(tx, user, op, members)
        message_id = self._resolve_target(user, device, op)
        if isinstance(op, state.EditOp):
            event = self._append(
                tx,
                cid,
                lambda p, s, t: MessageUpdated(
                    pos=p,
                    conversation_id=cid,
                    seq=s,
                    ts_ms=t,
                    message_id=message_id,
                    body=op.body,
                    editor=user,
                ),
                members,
            )
            self.conn.execute(
                "UPDATE messages SET body = ?, edited_ms = ? WHERE message_id = ?",
                (op.body, event.ts_ms, message_id),
            )
            return _applied(op.op_id, cid, message_id, event.seq, event.pos, event.ts_ms)
        already = self.conn.execute(
            "SELECT deleted FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()[0]
        if already:
            return _applied(op.op_id, cid, message_id, None, None, self.now_ms())
        event = self._append(
            tx,
            cid,
            lambda p, s, t: MessageDeleted(
                pos=p,
                conversation_id=cid,
                seq=s,
                ts_ms=t,
                message_id=message_id,
                deleted_by=user,
            ),
            members,
        )
        self.conn.execute(
            "UPDATE messages SET body = '', deleted = 1 WHERE message_id = ?", (message_id,)
        )
        return _applied(op.op_id, cid, message_id, event.seq, event.pos, event.ts_ms)

    def _resolve_target(self, user: str, device: str, op: state.EditOp | state.DeleteOp) -> str:
        """The message an edit or delete names; checks that ``user`` may change it."""
        message_id = op.message_id
        if op.target_op_id is not None:
            row = self.conn.execute(
                "SELECT kind, result FROM ops WHERE user = ? AND device = ? AND op_id = ?",
                (user, device, op.target_op_id),
            ).fetchone()
            target = orjson.loads(row[1]) if row is not None and row[0] == "send" else {}
            message_id = target.get("message_id")
            if message_id is None:
                raise _not_found("message")
        row = self.conn.execute(
            "SELECT conversation_id, sender, deleted FROM messages WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        if row is None or row[0] != op.conversation_id:
            raise _not_found("message")
        if row[1] != user:
            raise ApiError(403, "forbidden", "only the sender may change a message")
        if row[2] and isinstance(op, state.EditOp):
            raise ApiError(409, "conflict", "the message was deleted")
        return str(message_id)

    def _mark_read(
        self, tx: _Tx, user: str, op: state.MarkReadOp, members: tuple[str, ...]
    ) -> dict[str, Any]:
        cid = op.conversation_id
        last_seq, current = self.conn.execute(
            "SELECT c.last_seq, COALESCE(r.read_seq, 0) FROM conversations c LEFT JOIN reads r"
            " ON r.conversation_id = c.id AND r.user = ? WHERE c.id = ?",
            (user, cid),
        ).fetchone()
        if op.seq > last_seq:
            raise ApiError(422, "invalid", f"seq {op.seq} is past the conversation's last seq")
        if op.seq <= current:
            return _applied(op.op_id, cid, None, None, None, self.now_ms())
        self.conn.execute(
            "INSERT INTO reads (conversation_id, user, read_seq) VALUES (?, ?, ?)"
            " ON CONFLICT (conversation_id, user) DO UPDATE SET read_seq = excluded.read_seq",
            (cid, user, op.seq),
        )
        event = self._append(
            tx,
            cid,
            lambda p, s, t: ReadReceipt(
                pos=p, conversation_id=cid, seq=s, ts_ms=t, user=user, read_seq=op.seq
            ),
            members,
        )
        return _applied(op.op_id, cid, None, event.seq, event.pos, event.ts_ms)

    # --- reads --------------------------------------------------------------------------

    def pull(self, user: str, since: int, limit: int) -> tuple[list[str], int, bool]:
        """The events visible to ``user`` after ``since``, oldest first.

        A user sees an event when its position falls in one of their membership spans
        (from the event that added them to the one that removed them, both included).

        Returns:
            The events' JSON texts, the cursor to continue from, and whether more may wait.

        Raises:
            ApiError: 410 ``cursor_expired`` (with ``oldest_pos``) when ``since`` is older
                than the retained log or ahead of the head (the server lost its log).
        """
        with self._lock:
            head = self._head
            oldest = self._oldest
            if since < oldest - 1 or since > head:
                raise ApiError(
                    410,
                    "cursor_expired",
                    "the cursor is older than the retained event log"
                    if since < oldest - 1
                    else "the cursor is ahead of the server's event log",
                    oldest_pos=oldest,
                )
            scan_end = min(head, since + state.PULL_SCAN_MAX)
            rows = self.conn.execute(
                "SELECT e.pos, e.data FROM events e WHERE e.pos > ? AND e.pos <= ?"
                " AND EXISTS (SELECT 1 FROM spans s WHERE s.user = ?"
                " AND s.conversation_id = e.conversation_id AND s.from_pos <= e.pos"
                " AND (s.to_pos IS NULL OR s.to_pos >= e.pos))"
                " ORDER BY e.pos LIMIT ?",
                (since, scan_end, user, limit + 1),
            ).fetchall()
        if len(rows) > limit:
            rows = rows[:limit]
            return [row[1] for row in rows], rows[-1][0], True
        return [row[1] for row in rows], scan_end, scan_end < head

    def history(
        self, user: str, conversation_id: str, before: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Messages with ``seq < before``, oldest first, in their current state.

        Returns:
            The messages and whether nothing older exists.

        Raises:
            ApiError: 404 for a non-member.
        """
        with self._lock:
            self._require_member(conversation_id, user)
            rows = self.conn.execute(
                "SELECT message_id, conversation_id, seq, op_id, sender, body, ts_ms,"
                " edited_ms, deleted FROM messages WHERE conversation_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (conversation_id, before if before is not None else 1 << 62, limit + 1),
            ).fetchall()
        end = len(rows) <= limit
        rows = rows[:limit]
        rows.reverse()
        return [_message(row) for row in rows], end

    # --- the oracle: the server's truth, for tests --------------------------------------

    def all_messages(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every message of a conversation in ``seq`` order, current state, no authorization.

        Each dict has ``message_id``, ``conversation_id``, ``seq``, ``op_id``, ``sender``,
        ``device``, ``body``, ``ts_ms``, ``edited_ms`` and ``deleted``.
        """
        with self._lock:
            rows = self.conn.execute(
                "SELECT message_id, conversation_id, seq, op_id, sender, body, ts_ms,"
                " edited_ms, deleted, device FROM messages WHERE conversation_id = ?"
                " ORDER BY seq",
                (conversation_id,),
            ).fetchall()
        return [{**_message(row[:9]), "device": row[9]} for row in rows]

    def all_events(self, since: int = 0) -> list[dict[str, Any]]:
        """Every retained event after ``since`` in ``pos`` order, as decoded JSON objects."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT data FROM events WHERE pos > ? ORDER BY pos", (since,)
            ).fetchall()
        return [orjson.loads(row[0]) for row in rows]

    def all_conversations(self) -> list[dict[str, Any]]:
        """Every conversation (``id``, ``title``, ``members``, ``last_seq``, ``created_by``)."""
        with self._lock:
            ids = [row[0] for row in self.conn.execute("SELECT id FROM conversations ORDER BY id")]
            return [
                {k: v for k, v in self._conversation(cid, "").items() if k != "read_seq"}
                for cid in ids
            ]

    def op_result(self, user: str, device: str, op_id: str) -> dict[str, Any] | None:
        """The recorded result of an operation, or None if the server never saw it."""
        with self._lock:
            row = self.conn.execute(
                "SELECT result FROM ops WHERE user = ? AND device = ? AND op_id = ?",
                (user, device, op_id),
            ).fetchone()
        return None if row is None else orjson.loads(row[0])

    def users(self) -> list[str]:
        """Every user name, sorted."""
        with self._lock:
            return [row[0] for row in self.conn.execute("SELECT name FROM users ORDER BY name")]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _applied(
    op_id: str,
    conversation_id: str,
    message_id: str | None,
    seq: int | None,
    pos: int | None,
    ts_ms: int,
) -> dict[str, Any]:
    return {
        "op_id": op_id,
        "status": "applied",
        "conversation_id": conversation_id,
        "message_id": message_id,
        "seq": seq,
        "pos": pos,
        "ts_ms": ts_ms,
    }


def _rejected(op_id: str, error: ApiError) -> dict[str, Any]:
    return {
        "op_id": op_id,
        "status": "rejected",
        "code": error.code,
        "reason": error.reason,
        "status_code": error.status,
    }


def _message(row: Sequence[Any]) -> dict[str, Any]:
    message_id, conversation_id, seq, op_id, sender, body, ts_ms, edited_ms, deleted = row
    return {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "seq": seq,
        "op_id": op_id,
        "sender": sender,
        "body": body,
        "ts_ms": ts_ms,
        "edited_ms": edited_ms,
        "deleted": bool(deleted),
    }


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
