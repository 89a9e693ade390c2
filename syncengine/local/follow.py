"""Follow what a store gains: live engine events, or new messages read from the store.

When no other process syncs the store, :func:`tail` takes its lock and runs a connected
engine, so every event is seen. While a daemon syncs it, the store is polled instead
(:func:`poll_messages`): SQLite's WAL lets this process read what the daemon writes, and only
messages leave a trace there to be found.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable

from syncengine import SyncEngine
from syncengine.events import Event
from syncengine.local.account import engine_options, require_writable
from syncengine.local.lock import StoreLock
from syncengine.models import Message
from syncengine.store import Store

__all__ = ["POLL_INTERVAL_S", "poll_messages", "tail"]

#: How often the store is read for new messages while a daemon writes it.
POLL_INTERVAL_S = 0.2


async def tail(
    db: str | os.PathLike[str], *, following: Callable[[], None] | None = None
) -> AsyncGenerator[Event | Message, None]:
    """Events (this process syncs) or new messages (a daemon syncs), until closed.

    The store's lock, when taken here, is released when the iterator is closed. While a daemon
    syncs, ``following()`` is called once what the store already holds has been noted: every
    message stored from then on is yielded (a caller's readiness signal).
    """
    lock = StoreLock(db)
    if not lock.try_acquire():  # a daemon syncs the store: read what it writes
        async for message in poll_messages(db, on_ready=following):
            yield message
        return
    try:
        require_writable(db)  # syncing here writes the store
        with Store(db) as store:
            options = engine_options(store)
        async with SyncEngine(db, **options) as engine:
            async for event in engine.events():
                yield event
    finally:
        lock.release()


async def poll_messages(
    db: str | os.PathLike[str],
    *,
    interval_s: float = POLL_INTERVAL_S,
    on_ready: Callable[[], None] | None = None,
) -> AsyncGenerator[Message, None]:
    """Messages that reach the store after the call (by seq per conversation), until closed.

    ``on_ready()`` is called once the snapshot of what is already there is taken.
    """
    with Store(db) as store:
        seen = {c.id: c.last_seq for c in store.conversations()}
        if on_ready is not None:
            on_ready()
        while True:
            for conv in store.conversations():
                last = seen.get(conv.id, 0)
                if conv.last_seq <= last:
                    continue
                for msg in store.messages(conv.id, limit=1000):
                    if msg.seq is not None and msg.seq > last:
                        yield msg
                seen[conv.id] = conv.last_seq
            await asyncio.sleep(interval_s)
