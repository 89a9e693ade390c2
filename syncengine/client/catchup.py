"""The catch-up pipeline: pages pulled ahead on the loop, applied in order by one thread.

A catch-up has three stages per page: the server's work and the transfer, decoding (on the
event loop), and the apply (one SQLite transaction holding the page and its cursor, G3). The
apply is the binding stage, and most of it is the COMMIT waiting for the disk. Applying each
page through :func:`asyncio.to_thread` as soon as it was decoded left the disk idle between
two commits: the loop had to wake up, see the apply done, hand over the next page and start
the next pull. Measured at 100,000 events, those gaps were 23 % of the catch-up.

Here one worker thread lives for the whole catch-up and takes pages from its queue (a
single-worker executor: first in, first out), so the next COMMIT starts as soon as the
previous one ends. The loop keeps up to :data:`AHEAD` pages pulled and queued beyond the one
being applied, and accounts for each applied page in order (the protocol's cursor and seqs,
then the app's events).

Order and atomicity (G3) hold because there is one worker, each page is one transaction with
its cursor, and once a page fails no later page is applied: the cursor never jumps over a
page that was not stored.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from syncengine.client.tasks import wait_through_cancel
from syncengine.errors import CursorExpired

if TYPE_CHECKING:
    from syncengine.events import ServerEvent
    from syncengine.transport.base import Transport
    from syncengine.wire import EventPage

__all__ = ["AHEAD", "CatchUp"]

#: Pages pulled and queued beyond the one being applied. Two: one page ahead was not enough
#: when a pull's completion waited for the GIL (in 98 of 199 gaps the next page had not
#: arrived); more only holds more decoded pages in memory.
AHEAD = 2

#: Pages smaller than this are applied on the loop when nothing else is queued: a thread hop
#: costs more than their commit's wait (a live gap's pull brings a handful of events).
THREAD_APPLY_MIN = 64


class Exchange(Protocol):
    """What a catch-up needs of the session's exchange (not imported: no cycle)."""

    session: Any
    pulled_total: int

    def apply_safely(
        self, events: Sequence[ServerEvent], *, cursor: Any, synced: bool = False
    ) -> list[str]: ...

    def emit_new(self, events: Sequence[ServerEvent]) -> None: ...

    def emit_sent(self, events: Sequence[ServerEvent], sent: Sequence[str]) -> None: ...

    def send_epoch(self, transport: Transport) -> None: ...

    def keep_epoch(self, transport: Transport, page: EventPage) -> None: ...

    async def _resync(self, transport: Transport) -> None: ...

    def readded(self, events: Sequence[ServerEvent]) -> list[str]: ...


class _Applied(NamedTuple):
    """What applying one page did, accounted for in order on the loop."""

    sent: list[str]  # own sends the page moved to SENT
    readded: list[str]  # conversations the page adds the user back to


class _Skipped(Exception):
    """A page not applied because an earlier one failed."""


class CatchUp:
    """One catch-up: pull from the protocol's cursor until caught up.

    Args:
        exchange: the session's exchange (applies pages, emits, resyncs).
        transport: the transport to pull from.
    """

    def __init__(self, exchange: Exchange, transport: Transport) -> None:
        self.exchange = exchange
        self.transport = transport
        self.core = exchange.session.core
        self.pulled = 0
        self._queued: collections.deque[tuple[concurrent.futures.Future[_Applied], EventPage]]
        self._queued = collections.deque()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._broken = False
        #: Conversations the pulled pages added the user back to, in order (their history
        #: is read again once the catch-up is done).
        self.readded: list[str] = []

    async def run(self) -> int:
        """Pull and apply until caught up. Returns the number of events pulled."""
        try:
            return await self._run()
        finally:
            await self._abandon()
            if self._pool is not None:
                self._pool.shutdown(wait=False)

    async def _run(self) -> int:
        query: dict[str, Any] | None = self.core.pull_request()
        self.exchange.send_epoch(self.transport)  # the server checks the cursor continues its log
        while True:
            if query is not None and len(self._queued) <= AHEAD:
                if await self._finish_done():
                    return self.pulled
                try:
                    page = await self.transport.pull(**query)
                except CursorExpired:
                    await self._drain()
                    await self.exchange._resync(self.transport)
                    self.exchange.send_epoch(self.transport)
                    query = self.core.pull_request()
                    continue
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    await self._drain()  # the pages already pulled are good: keep them
                    raise
                self.core.server_answered()
                self.exchange.keep_epoch(self.transport, page)
                query = self.core.prefetch_request(page)
                if not self._queued and len(page.events) < THREAD_APPLY_MIN:
                    applied = self._apply(page, self.core.page_cursor(page))
                    if self._account(page, applied):
                        return self.pulled
                    continue
                self._submit(page)
            elif not self._queued or await self._finish_oldest():
                return self.pulled

    # --- the apply thread ---------------------------------------------------------------

    def _submit(self, page: EventPage) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "syncengine-apply")
        cursor = self.core.page_cursor(page)
        self._queued.append((self._pool.submit(self._apply, page, cursor), page))

    def _apply(self, page: EventPage, cursor: Any) -> _Applied:
        """Apply one page with its cursor (on the worker, or on the loop when small).
        Returns the own sends the page moved to SENT and the conversations it adds the user
        back to (read before the page applies; reported when it is accounted for)."""
        if self._broken:
            raise _Skipped
        try:
            readded = self.exchange.readded(page.events)
            sent = self.exchange.apply_safely(page.events, cursor=cursor, synced=not page.has_more)
            store = self.exchange.session.require_store()
            for raw, error in page.bad:
                store.quarantine(raw, error)
        except BaseException:
            self._broken = True
            raise
        return _Applied(sent, readded)

    # --- accounting, in order, on the loop ----------------------------------------------

    def _account(self, page: EventPage, applied: _Applied) -> bool:
        """An applied page: the app's events, then the protocol's cursor and seqs."""
        sent = applied.sent
        self.readded.extend(applied.readded)
        self.pulled += len(page.events)
        self.exchange.pulled_total += len(page.events)
        self.exchange.emit_sent(page.events, sent)
        self.exchange.emit_new(page.events)
        return self.core.receive_page(page)

    async def _finish_oldest(self) -> bool:
        future, page = self._queued.popleft()
        try:
            applied = await asyncio.wrap_future(future)
        except BaseException:
            if not future.done():  # this task was cancelled: the apply goes on
                self._queued.appendleft((future, page))
            raise
        return self._account(page, applied)

    async def _finish_done(self) -> bool:
        """Account for the pages already applied, without waiting."""
        while self._queued and self._queued[0][0].done():
            if await self._finish_oldest():
                return True
        return False

    async def _drain(self) -> None:
        while self._queued:
            await self._finish_oldest()

    async def _abandon(self) -> None:
        """After a failure or a cancellation: apply nothing more, wait for a running apply.

        Pages not started are dropped (pulled again next time); a running one cannot be
        stopped mid-transaction, and the store must not be closed under it.
        """
        self._broken = True
        running = []
        for future, _page in self._queued:
            if not future.cancel():
                running.append(asyncio.wrap_future(future))
        self._queued.clear()
        if running:
            await wait_through_cancel(running)
