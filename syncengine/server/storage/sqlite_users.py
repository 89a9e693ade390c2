"""SQLite storage of users, devices and tokens (a mixin of
:class:`~syncengine.server.storage.sqlite.SqliteStorage`)."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from syncengine.server.storage.interface import Identity, PasswordRecord

__all__ = ["UserTables", "chunks", "token_hash"]


def token_hash(token: str) -> str:
    """The SHA-256 under which a token is stored (the token itself never is)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """``items`` in slices of ``size`` (SQLite caps the parameters of one statement)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class UserTables:
    """Users, devices and tokens. Needs ``conn``, ``_lock``, ``now_ms`` and ``_write``."""

    conn: sqlite3.Connection
    _lock: threading.RLock

    def now_ms(self) -> int:  # pragma: no cover - provided by the storage
        """Server time in ms."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:  # pragma: no cover - by the storage
        raise NotImplementedError

    def password_record(self, user: str) -> PasswordRecord | None:
        """``(salt, hash, params)`` of a user, or None if the user does not exist."""
        with self._lock:
            row = self.conn.execute(
                "SELECT salt, pw_hash, pw_params FROM users WHERE name = ?", (user,)
            ).fetchone()
        return None if row is None else PasswordRecord(row[0], row[1], row[2])

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
                (token_hash(token), user, device, now, now + int(ttl_s * 1000)),
            )
            self.conn.execute(
                "INSERT INTO devices (user, device, first_ms, last_ms) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user, device) DO UPDATE SET last_ms = excluded.last_ms",
                (user, device, now, now),
            )
        return token

    def authenticate(self, token: str) -> Identity | None:
        """``(user, device, expires_ms)`` for a valid, unexpired token, else None."""
        with self._lock:
            row = self.conn.execute(
                "SELECT user, device, expires_ms FROM tokens WHERE token_hash = ?",
                (token_hash(token),),
            ).fetchone()
        if row is None or row[2] <= self.now_ms():
            return None
        return Identity(row[0], row[1], row[2])

    def set_last_seen(self, user: str, ms: int) -> None:
        """Remember when a user was last connected (survives restarts)."""
        with self._write():
            self.conn.execute("UPDATE users SET last_seen_ms = ? WHERE name = ?", (ms, user))

    def last_seen(self, users: Sequence[str]) -> dict[str, int | None]:
        """The stored ``last_seen_ms`` of each user (None when never seen or unknown)."""
        out: dict[str, int | None] = dict.fromkeys(users)
        with self._lock:
            for chunk in chunks(users, 500):
                marks = ",".join("?" * len(chunk))
                for name, seen in self.conn.execute(
                    f"SELECT name, last_seen_ms FROM users WHERE name IN ({marks})", chunk
                ):
                    out[name] = seen
        return out

    def users(self) -> list[str]:
        """Every user name, sorted."""
        with self._lock:
            return [row[0] for row in self.conn.execute("SELECT name FROM users ORDER BY name")]
