"""The Matrix live link: a task that long-polls ``/sync`` from the engine's cursor.

Matrix has no WebSocket: the link is a ``/sync?timeout=30000`` loop (Synapse answers within
10-30 ms of a new event). Each response yields its events, then a
:class:`~syncengine.events.Checkpoint` with its ``next_batch``: the engine commits that cursor
with everything before it. Typing and presence go out as REST PUTs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from syncengine.errors import ServerUnavailable
from syncengine.events import Checkpoint, ServerEvent

__all__ = ["MatrixSyncLink"]


class _Syncer(Protocol):
    """What the link needs of the transport (:class:`MatrixTransport`)."""

    live_timeout_ms: int

    async def sync_once(self, since: Any, wait_ms: int = 0) -> tuple[list[Any], str, bool]: ...

    async def send_typing(self, conversation_id: str, typing: bool) -> None: ...

    async def send_presence(self, status: str) -> None: ...


log = logging.getLogger("syncengine.matrix")

#: Responses read ahead of the engine (each is many events): back-pressure beyond that.
_QUEUE_RESPONSES = 4


class MatrixSyncLink:
    """One live ``/sync`` loop (see the module docstring). Use :meth:`start`.

    Attributes:
        head: the cursor the link started from (it streams everything after it).
    """

    def __init__(self, transport: _Syncer, since: int | str | None) -> None:
        self.head = since
        self._transport = transport
        self._cursor = since
        self._queue: asyncio.Queue[list[ServerEvent] | BaseException] = asyncio.Queue(
            _QUEUE_RESPONSES
        )
        self._pending: list[ServerEvent] = []
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    @classmethod
    def start(cls, transport: _Syncer, since: int | str | None) -> MatrixSyncLink:
        """Start the poll loop from ``since`` (None, 0 or "": from now, an initial sync)."""
        link = cls(transport, since)
        link._task = asyncio.get_running_loop().create_task(link._run(), name="matrix-sync")
        return link

    async def _run(self) -> None:
        wait_ms = 0  # the first poll answers at once: the engine learns it is caught up
        try:
            while True:
                events, next_batch, joined = await self._transport.sync_once(self._cursor, wait_ms)
                self._cursor = next_batch
                await self._queue.put([*events, Checkpoint(cursor=next_batch)])
                wait_ms = 0 if joined else self._transport.live_timeout_ms
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to recv(): the link is lost
            await self._queue.put(exc)

    async def recv(self) -> ServerEvent | None:
        """The next event; a ``Checkpoint`` closes each ``/sync`` response.

        Raises:
            ServerUnavailable / AuthFailed / RateLimited / WireError: the poll failed (the
                link is lost; reconnect from the last committed cursor).
        """
        if self._pending:
            return self._pending.pop(0)
        if self._failed is not None:
            raise self._failed
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._failed = item
            raise item
        self._pending = item
        return self._pending.pop(0) if self._pending else None

    async def send_typing(self, conversation_id: str, typing: bool) -> None:
        """Tell the room this user started or stopped typing."""
        if self._task is None or self._task.done():
            raise ServerUnavailable("the live link is closed")
        await self._transport.send_typing(conversation_id, typing)

    async def send_presence(self, status: str) -> None:
        """Set this user's presence (``online``, ``away``)."""
        await self._transport.send_presence(status)

    async def close(self) -> None:
        """Stop the poll loop; never raises."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
