"""What a running sync has done so far, read from the engine's memory, never from its store.

A one-shot ``syncengine sync`` draws a progress bar while it catches up. Reading the store's
cursor for it (every 100 ms, from the event loop's thread) blocked the loop behind the
apply thread's commit on the store's lock, up to 15 ms a read; the figures here are the
session's own counters and the protocol's cursor, updated as each page is committed. The
bar is sized from the engine's own transport (its connection, its SSL context) rather than
from a second HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from syncengine.errors import SyncEngineError

if TYPE_CHECKING:
    from syncengine.client.engine import SyncEngine

__all__ = ["SyncCounters", "counters", "server_head"]


@attrs.frozen
class SyncCounters:
    """Work done by an engine's session since it opened.

    Attributes:
        pushed: operations the server acknowledged.
        pulled: events pulled and committed.
        cursor: the stream position committed last (in memory; the store holds the same).
    """

    pushed: int
    pulled: int
    cursor: Any


def counters(engine: SyncEngine) -> SyncCounters:
    """The engine's counters, from memory (cheap enough for a 10 Hz ticker on the loop)."""
    session = engine._session
    exchange = session.exchange
    return SyncCounters(exchange.pushed_total, exchange.pulled_total, session.core.cursor)


async def server_head(engine: SyncEngine) -> int | None:
    """The server's stream head through the engine's own transport (None if unknown)."""
    transport = engine._session.transport
    health_of = getattr(transport, "health", None)  # REST has it; other transports may not
    if health_of is None:
        return None
    try:
        health = await health_of()
    except SyncEngineError:
        return None  # the sync itself reports the failure with the right message
    head = health.get("head")
    return head if type(head) is int else None
