"""The reference server's storage: an interface, and its implementations.

- :mod:`~syncengine.server.storage.interface`: :class:`ServerStorage` and
  :class:`WriteTx` (what any database must offer), and the row types.
- :mod:`~syncengine.server.storage.sqlite`: :class:`SqliteStorage`, split by concern into
  ``sqlite_users``, ``sqlite_conversations`` and ``sqlite_log``, with ``sqlite_schema``.
- :mod:`~syncengine.server.storage.postgres`: ``PostgresStorage`` (psycopg 3, the optional
  extra ``postgres``), shared by several server processes; :func:`open_storage` picks one.
- :mod:`~syncengine.server.storage.memory`: :class:`MemoryStorage`, dictionaries and an undo
  journal, no database (the server's rules run purely in memory: the protocol pair tests).

:class:`Storage` is the SQLite storage under its historical name (tests and benchmarks open
it directly as the server's truth); it adds :meth:`Storage.create_conversation`, a write
without live fan-out, for seeding a database.
"""

from __future__ import annotations

from typing import Any

from syncengine.protocol.bodies import ConversationSnapshot
from syncengine.server.storage.interface import Committed, ServerStorage, WriteTx
from syncengine.server.storage.memory import MemoryStorage
from syncengine.server.storage.sqlite import SqliteStorage
from syncengine.server.storage.sqlite_schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "Committed",
    "MemoryStorage",
    "ServerStorage",
    "SqliteStorage",
    "Storage",
    "WriteTx",
    "open_storage",
]


def open_storage(config: Any) -> ServerStorage:
    """The storage a :class:`~syncengine.server.config.ServerConfig` names: PostgreSQL when
    ``config.database_url`` is set, else the SQLite file under ``config.data_dir``.

    Raises:
        RuntimeError: PostgreSQL asked for but psycopg is missing, or unreachable.
    """
    if config.database_url:
        try:
            from syncengine.server.storage.postgres import PostgresStorage
        except ImportError:
            raise RuntimeError(
                "--database needs psycopg: pip install 'syncengine[postgres]'"
            ) from None
        return PostgresStorage(config.database_url, retention=config.retention)
    return Storage(config.db_path, retention=config.retention)


class Storage(SqliteStorage):
    """The SQLite storage (its historical name), with a seeding helper."""

    def create_conversation(
        self, actor: str, conversation_id: str, title: str, members: tuple[str, ...]
    ) -> tuple[ConversationSnapshot, list[Committed], bool]:
        """Create a conversation with the server's rules, without live fan-out.

        Returns:
            The conversation, the committed events, and whether it was created now.

        Raises:
            Conflict: the id is taken by another creation.
        """
        # Imported here: the writes read this package's interface module.
        from syncengine.server import writes

        with self.write() as tx:
            # A seeding helper (tests, tools): its members need not have logged in yet.
            created, _pos, _ts = writes.create_conversation(
                tx, actor, conversation_id, title, members, known_only=False
            )
            conv = writes.snapshot(tx, conversation_id, actor)
        return conv, tx.committed, created
