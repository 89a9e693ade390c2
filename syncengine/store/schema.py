"""Schema history of the local store, recorded in the database by sqlite-utils ``Migrations``.

Rules for this file:

- Never edit or reorder a migration that has shipped; add a new one at the end.
- Each migration runs inside the opener's ``BEGIN IMMEDIATE`` transaction, so two processes
  opening the same new file cannot both apply it.
- ``tests/data/schemas/`` keeps a golden database of every released schema; the migration
  test opens each and checks it reaches the current schema with its data intact.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

__all__ = ["MIGRATIONS", "SCHEMA_NAMES"]

MIGRATIONS = Migrations("syncengine.store")


@MIGRATIONS(name="0001_initial")
def _initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT
        );
        -- meta_seq: seq of the last conversation_updated applied (order guard for title and
        -- members); last_seq: highest seq stored; read_seq: this user's read position.
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL DEFAULT '',
            members TEXT NOT NULL DEFAULT '[]',
            meta_seq INTEGER NOT NULL DEFAULT -1,
            last_seq INTEGER NOT NULL DEFAULT 0,
            read_seq INTEGER NOT NULL DEFAULT 0,
            pending INTEGER NOT NULL DEFAULT 0,
            created_at REAL
        );
        CREATE TABLE members (
            conversation_id TEXT NOT NULL,
            user TEXT NOT NULL,
            PRIMARY KEY (conversation_id, user)
        ) WITHOUT ROWID;
        CREATE INDEX members_user ON members(user);
        -- local_id is the rowid: appends stay sequential. A local echo has no id and no seq
        -- until the server copy replaces it (matched by sender + op_id).
        CREATE TABLE messages (
            local_id INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            seq INTEGER,
            id TEXT,
            op_id TEXT,
            sender TEXT NOT NULL,
            body TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE UNIQUE INDEX messages_conv_seq ON messages(conversation_id, seq);
        CREATE UNIQUE INDEX messages_id ON messages(id);
        CREATE UNIQUE INDEX messages_sender_op ON messages(sender, op_id);
        -- Edits and deletes live beside the message so that they apply in any order, even
        -- before the message itself arrives (G4). edit_seq guards against older edits.
        CREATE TABLE message_patches (
            message_id TEXT PRIMARY KEY,
            body TEXT,
            edit_seq INTEGER NOT NULL DEFAULT -1,
            edited_at REAL,
            deleted INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE reads (
            conversation_id TEXT NOT NULL,
            user TEXT NOT NULL,
            read_seq INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, user)
        ) WITHOUT ROWID;
        CREATE TABLE outbox (
            n INTEGER PRIMARY KEY AUTOINCREMENT,
            op_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            conversation_id TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            claimed_at REAL,
            result TEXT
        );
        CREATE INDEX outbox_state ON outbox(state, n);
        CREATE TABLE cursors (
            stream TEXT PRIMARY KEY,
            pos INTEGER NOT NULL,
            updated_at REAL
        );
        CREATE TABLE presence (
            user TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            last_seen REAL,
            ts_ms INTEGER NOT NULL
        );
        CREATE TABLE typing (
            conversation_id TEXT NOT NULL,
            user TEXT NOT NULL,
            expires_at REAL NOT NULL,
            ts_ms INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, user)
        ) WITHOUT ROWID;
        -- Poison events: decoded but could not be applied. The cursor moves past them.
        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            pos INTEGER,
            raw TEXT NOT NULL,
            error TEXT NOT NULL,
            at REAL NOT NULL
        );
        """
    )


@MIGRATIONS(name="0002_opaque_cursor_event_ids")
def _opaque_cursor(db: Database) -> None:
    # A protocol whose cursor is an opaque token (Matrix) keeps it in a TEXT column: in the
    # INTEGER ``pos`` column SQLite's affinity would turn an all-digit token into a number.
    # ``event_seqs`` maps a server event id to the order key this store gave it (Matrix
    # events carry no seq): receipts and relations name events by id.
    db.executescript(
        """
        ALTER TABLE cursors ADD COLUMN token TEXT;
        CREATE TABLE event_seqs (
            event_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            seq INTEGER NOT NULL
        );
        CREATE INDEX event_seqs_conv_seq ON event_seqs(conversation_id, seq);
        """
    )


@MIGRATIONS(name="0003_replies")
def _replies(db: Database) -> None:
    # The server id a message replies to; for a local echo replying to a message still
    # pending, the op id of that message's send (replaced by the server id on confirmation).
    db.execute("ALTER TABLE messages ADD COLUMN reply_to TEXT")


@MIGRATIONS(name="0004_reactions")
def _reactions(db: Database) -> None:
    # A set: a user's emoji on a message is there or not, so a repeated event changes nothing.
    db.executescript(
        """
        CREATE TABLE reactions (
            message_id TEXT NOT NULL,
            emoji TEXT NOT NULL,
            user TEXT NOT NULL,
            PRIMARY KEY (message_id, emoji, user)
        ) WITHOUT ROWID;
        """
    )


#: Names of every migration this version knows, oldest first.
SCHEMA_NAMES: tuple[str, ...] = tuple(m.name for m in MIGRATIONS._migrations)
