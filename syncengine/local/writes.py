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
from syncengine.models import Conversation, Message, OutboxItem
from syncengine.store import Store

__all__ = [
    "cancel_operation",
    "change_members",
    "offline_engine",
    "queue_conversation",
    "queue_delete",
    "queue_edit",
    "queue_reaction",
    "queue_read",
    "queue_send",
    "requeue",
]


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


async def queue_send(
    db: str | os.PathLike[str], conversation_id: str, body: str, reply_to: str | None = None
) -> Message:
    """Queue a message, maybe replying to ``reply_to`` (a server id, or the op id of an
    unacknowledged send); returns its local echo (PENDING) once durably queued.

    Raises:
        UsageError: empty or too long body. NotFound: unknown conversation or message.
    """
    async with offline_engine(db) as engine:
        if reply_to is not None:
            return await engine.reply(conversation_id, body, reply_to)
        return await engine.send(conversation_id, body)


async def queue_edit(db: str | os.PathLike[str], message_id: str, body: str) -> OutboxItem:
    """Queue an edit of a message (its server id, or the op id of an unacknowledged send).

    Raises:
        NotFound: no such message in the store. UsageError: empty or too long body.
    """
    async with offline_engine(db) as engine:
        return await engine.edit_message(message_id, body)


async def queue_delete(db: str | os.PathLike[str], message_id: str) -> OutboxItem:
    """Queue the deletion of a message (its server id, or its unacknowledged send's op id).

    Raises:
        NotFound: no such message in the store.
    """
    async with offline_engine(db) as engine:
        return await engine.delete_message(message_id)


async def queue_read(db: str | os.PathLike[str], conversation_id: str) -> OutboxItem:
    """Queue a read receipt up to the newest message in the store.

    Raises:
        NotFound: the conversation is not in the store.
    """
    async with offline_engine(db) as engine:
        return await engine.mark_read(conversation_id)


async def queue_conversation(
    db: str | os.PathLike[str], title: str, members: Sequence[str] = ()
) -> Conversation:
    """Queue the creation of a conversation (usable offline at once)."""
    async with offline_engine(db) as engine:
        return await engine.create_conversation(title, members=list(members))


async def cancel_operation(db: str | os.PathLike[str], op_id: str) -> OutboxItem:
    """Cancel an operation not yet sent; returns it as it was.

    Raises:
        NotFound: no such operation. UsageError: it cannot be cancelled (the reason says why).
    """
    async with offline_engine(db) as engine:
        return await engine.cancel(op_id)


async def queue_reaction(
    db: str | os.PathLike[str], message_id: str, emoji: str, remove: bool = False
) -> OutboxItem:
    """Queue adding (or removing) one's reaction to a sent message.

    Raises:
        NotFound: no such message. UsageError: a bad emoji or a message not yet sent.
    """
    async with offline_engine(db) as engine:
        return await engine.react(message_id, emoji, remove=remove)


async def change_members(
    db: str | os.PathLike[str],
    conversation_id: str,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> list[OutboxItem]:
    """Queue member additions, then removals; returns the queued operations.

    Raises:
        NotFound: the conversation is not in the store. UsageError: a malformed user name.
    """
    async with offline_engine(db) as engine:
        added = await engine.add_members(conversation_id, list(add))
        return added + await engine.remove_members(conversation_id, list(remove))


async def requeue(db: str | os.PathLike[str], op_ids: Sequence[str] | None = None) -> list[str]:
    """Move FAILED operations back to PENDING (all of them when ``op_ids`` is None).

    Raises:
        NotFound: an operation named is not in the outbox. UsageError: it is not FAILED.
    """
    async with offline_engine(db) as engine:
        return await engine.retry(None if op_ids is None else list(op_ids))
