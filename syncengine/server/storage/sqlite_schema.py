"""The SQLite schema of the reference server, and the check that a file is ours to open.

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
    blocks         (user, blocked): ``user`` refuses to be added to conversations by
                   ``blocked`` (added after schema 1 was first written: created when missing,
                   older servers ignore it)

The statements are the ones sqlite-utils wrote for schema 1, so files written before this
module existed open unchanged.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["SCHEMA", "SCHEMA_VERSION", "create_schema"]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS "users" (
   "name" TEXT PRIMARY KEY,
   "salt" BLOB NOT NULL,
   "pw_hash" BLOB NOT NULL,
   "pw_params" TEXT NOT NULL,
   "created_ms" INTEGER NOT NULL,
   "last_seen_ms" INTEGER
);
CREATE TABLE IF NOT EXISTS "devices" (
   "user" TEXT,
   "device" TEXT,
   "first_ms" INTEGER,
   "last_ms" INTEGER,
   PRIMARY KEY ("user", "device")
);
CREATE TABLE IF NOT EXISTS "tokens" (
   "token_hash" TEXT PRIMARY KEY,
   "user" TEXT NOT NULL,
   "device" TEXT NOT NULL,
   "created_ms" INTEGER NOT NULL,
   "expires_ms" INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS "conversations" (
   "id" TEXT PRIMARY KEY,
   "title" TEXT NOT NULL,
   "created_by" TEXT NOT NULL,
   "created_ms" INTEGER NOT NULL,
   "created_pos" INTEGER NOT NULL,
   "last_seq" INTEGER NOT NULL,
   "origin" TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS "members" (
   "conversation_id" TEXT,
   "user" TEXT,
   PRIMARY KEY ("conversation_id", "user")
);
CREATE INDEX IF NOT EXISTS "idx_members_user"
    ON "members" ("user");
CREATE TABLE IF NOT EXISTS "spans" (
   "conversation_id" TEXT NOT NULL,
   "user" TEXT NOT NULL,
   "from_pos" INTEGER NOT NULL,
   "to_pos" INTEGER
);
CREATE INDEX IF NOT EXISTS "idx_spans_user_conversation_id"
    ON "spans" ("user", "conversation_id");
CREATE TABLE IF NOT EXISTS "events" (
   "pos" INTEGER PRIMARY KEY,
   "conversation_id" TEXT NOT NULL,
   "seq" INTEGER NOT NULL,
   "type" TEXT NOT NULL,
   "ts_ms" INTEGER NOT NULL,
   "data" TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "idx_events_conversation_id_seq"
    ON "events" ("conversation_id", "seq");
CREATE TABLE IF NOT EXISTS "messages" (
   "message_id" TEXT PRIMARY KEY,
   "conversation_id" TEXT NOT NULL,
   "seq" INTEGER NOT NULL,
   "op_id" TEXT,
   "sender" TEXT NOT NULL,
   "device" TEXT,
   "body" TEXT NOT NULL,
   "ts_ms" INTEGER NOT NULL,
   "edited_ms" INTEGER,
   "deleted" INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "idx_messages_conversation_id_seq"
    ON "messages" ("conversation_id", "seq");
CREATE TABLE IF NOT EXISTS "ops" (
   "user" TEXT,
   "device" TEXT,
   "op_id" TEXT,
   "kind" TEXT NOT NULL,
   "payload_hash" TEXT NOT NULL,
   "result" TEXT NOT NULL,
   "ts_ms" INTEGER NOT NULL,
   PRIMARY KEY ("user", "device", "op_id")
);
CREATE TABLE IF NOT EXISTS "reads" (
   "conversation_id" TEXT,
   "user" TEXT,
   "read_seq" INTEGER,
   PRIMARY KEY ("conversation_id", "user")
);
CREATE TABLE IF NOT EXISTS "meta" (
   "key" TEXT PRIMARY KEY,
   "value" INTEGER
);
CREATE TABLE IF NOT EXISTS "blocks" (
   "user" TEXT NOT NULL,
   "blocked" TEXT NOT NULL,
   "created_ms" INTEGER NOT NULL,
   PRIMARY KEY ("user", "blocked")
);
CREATE INDEX IF NOT EXISTS "idx_blocks_blocked"
    ON "blocks" ("blocked");
"""


def create_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables that are missing, in one transaction, and stamp the version.

    Raises:
        RuntimeError: the file was written by a newer server (it is left untouched).
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"{path} was written by a newer server (schema {version} > "
            f"{SCHEMA_VERSION}); refusing to touch it"
        )
    conn.executescript(f"BEGIN;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
