"""The PostgreSQL schema of the reference server.

The tables mirror the SQLite ones (:mod:`~syncengine.server.storage.sqlite_schema`), with
``username`` for SQLite's ``user`` column (a reserved word in PostgreSQL), and three more:

    log_head      one row: ``head`` (the last pos written), ``oldest`` (the oldest pos the
                  log serves) and ``last_ts`` (the newest ``ts_ms``). Every append locks and
                  updates it inside its transaction, so appends from every node are
                  serialised: positions are dense, and commit order is pos order (a reader
                  never sees pos 11 before pos 10 commits).
    rate_buckets  token buckets shared by every node (REST and login rate limits).
    blocks        (username, blocked): ``username`` refuses to be added by ``blocked``
                  (as in SQLite; created when missing).
    meta          ``schema_version``.

Several nodes may start at once: the schema is created under a transaction-level advisory
lock, so only one of them runs the DDL.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "SCHEMA_LOCK", "SCHEMA_VERSION", "create_schema"]

SCHEMA_VERSION = 1

#: The advisory lock key under which the schema is created (any constant will do).
SCHEMA_LOCK = 0x5E_16_0001

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    salt BYTEA NOT NULL,
    pw_hash BYTEA NOT NULL,
    pw_params TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_seen_ms BIGINT
);
CREATE TABLE IF NOT EXISTS devices (
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    PRIMARY KEY (username, device)
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_tokens_expires ON tokens (expires_ms);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_pos BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    origin TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    conversation_id TEXT NOT NULL,
    username TEXT NOT NULL,
    PRIMARY KEY (conversation_id, username)
);
CREATE INDEX IF NOT EXISTS idx_members_user ON members (username);
CREATE TABLE IF NOT EXISTS spans (
    conversation_id TEXT NOT NULL,
    username TEXT NOT NULL,
    from_pos BIGINT NOT NULL,
    to_pos BIGINT
);
CREATE INDEX IF NOT EXISTS idx_spans_user_conversation ON spans (username, conversation_id);
CREATE INDEX IF NOT EXISTS idx_spans_conversation ON spans (conversation_id);
CREATE TABLE IF NOT EXISTS events (
    pos BIGINT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    op_id TEXT,
    sender TEXT NOT NULL,
    device TEXT,
    body TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    edited_ms BIGINT,
    deleted BOOLEAN NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE TABLE IF NOT EXISTS ops (
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    op_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    result TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    PRIMARY KEY (username, device, op_id)
);
CREATE TABLE IF NOT EXISTS reads (
    conversation_id TEXT NOT NULL,
    username TEXT NOT NULL,
    read_seq BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, username)
);
CREATE TABLE IF NOT EXISTS log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    head BIGINT NOT NULL,
    oldest BIGINT NOT NULL,
    last_ts BIGINT NOT NULL
);
INSERT INTO log_head (id, head, oldest, last_ts) VALUES (1, 0, 1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_s DOUBLE PRECISION NOT NULL,
    granted BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    username TEXT NOT NULL,
    blocked TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (username, blocked)
);
CREATE INDEX IF NOT EXISTS idx_blocks_blocked ON blocks (blocked);
"""


def create_schema(conn: Any, where: str) -> None:
    """Create what is missing, in one transaction under the schema lock, and stamp the version.

    Args:
        conn: an autocommit psycopg connection.
        where: the database, for the error message.

    Raises:
        RuntimeError: the database was written by a newer server (it is left untouched).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
        if exists:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and row[0] > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{where} was written by a newer server (schema {row[0]} > "
                    f"{SCHEMA_VERSION}); refusing to touch it"
                )
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION,),
        )
