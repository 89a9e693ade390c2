"""Queue writes from a process that does not sync (the CLI): through the engine's public API.

A CLI ``send`` is an app's send: it goes through :meth:`SyncEngine.send` on an engine that
does not connect, so it emits :class:`~syncengine.events.MessageQueued` and follows the same
validation and idempotency rules. Whichever process syncs the store pushes it later.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from syncengine import SyncEngine
from syncengine.local.account import require_account, require_store, require_writable
from syncengine.models import Conversation, Message
from syncengine.store import Store

__all__ = ["offline_engine", "queue_conversation", "queue_send", "requeue"]


@contextlib.asynccontextmanager
async def offline_engine(db: str | os.PathLike[str], **options: Any) -> AsyncIterator[SyncEngine]:
    """An open, non-connecting :class:`SyncEngine` on an existing store.

    It never records a connection state nor touches SENDING rows: those belong to the process
    that syncs the store.

    Raises:
        NotLoggedIn: there is no store at ``db``, or no login ever succeeded with it.
        StoreError: the store is read-only.
    """
    require_store(db)
    require_writable(db)
    with Store(db) as store:
        require_account(store, db)
    async with SyncEngine(db, connect=False, **options) as engine:
        yield engine


async def queue_send(db: str | os.PathLike[str], conversation_id: str, body: str) -> Message:
    """Queue a message; returns its local echo (PENDING) once durably queued.

    Raises:
        UsageError: empty or too long body. NotFound: unknown conversation.
    """
    async with offline_engine(db) as engine:
        return await engine.send(conversation_id, body)


async def queue_conversation(
    db: str | os.PathLike[str], title: str, members: Sequence[str] = ()
) -> Conversation:
    """Queue the creation of a conversation (usable offline at once)."""
    async with offline_engine(db) as engine:
        return await engine.create_conversation(title, members=list(members))


async def requeue(db: str | os.PathLike[str], op_ids: Sequence[str] | None = None) -> list[str]:
    """Move FAILED operations back to PENDING (all of them when ``op_ids`` is None).

    Raises:
        NotFound: an operation named is not in the outbox. UsageError: it is not FAILED.
    """
    async with offline_engine(db) as engine:
        return await engine.retry(None if op_ids is None else list(op_ids))
