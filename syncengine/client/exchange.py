"""Push and pull: the request/response exchanges of a session, and applying what they bring."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import orjson

from syncengine.core.policy import RetryPolicy
from syncengine.errors import (
    CursorExpired,
    RateLimited,
    Rejected,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    TransportError,
    WireError,
)
from syncengine.events import (
    ConversationUpdated,
    Discontinuity,
    DurableEvent,
    MessageFailed,
    MessageSent,
    ServerEvent,
)
from syncengine.models import ConnectionState, HistoryPage, OpKind, OutboxItem
from syncengine.transport.base import Transport
from syncengine.wire import EventPage

if TYPE_CHECKING:
    from syncengine.client.bus import EventBus
    from syncengine.client.config import EngineConfig
    from syncengine.core.sync import SyncCore
    from syncengine.store import Store
    from syncengine.transport.base import LiveLink


class Session(Protocol):
    """What an :class:`Exchange` needs of its session (it is not imported: no cycle)."""

    config: EngineConfig
    bus: EventBus
    core: SyncCore
    policy: RetryPolicy
    transport: Transport | None
    link: LiveLink | None

    def require_store(self) -> Store: ...

    def require_transport(self) -> Transport: ...


__all__ = ["Exchange"]

log = logging.getLogger("syncengine.engine")

_SEEN_POS_MAX = 50_000
# Batches of at least this many events are committed on a worker thread: sqlite3 releases the
# GIL while SQLite works and a commit mostly waits for the disk, so receiving and decoding go
# on meanwhile. Smaller ones are committed on the loop (a thread hop costs ~50 µs).
_THREAD_APPLY_MIN = 64


class Exchange:
    """Pushes the outbox, pulls pages and resyncs for a :class:`Session`."""

    def __init__(self, session: Session) -> None:
        self.session = session
        cfg = session.config
        # Retries of single requests while the session stays up (a failed push or pull).
        self.op_policy = RetryPolicy(base=cfg.backoff_base_s, cap=cfg.backoff_cap_s)
        self.presence_stale = False
        self._push_lock = asyncio.Lock()
        self._pull_lock = asyncio.Lock()
        self._seen_pos: collections.OrderedDict[int, None] = collections.OrderedDict()

    def op_delay(self, exc: BaseException) -> float:
        """The wait before retrying a single failed request while the session stays up."""
        return self.op_policy.delay(exc)

    # --- emitting -----------------------------------------------------------------------

    def emit_new(self, events: Sequence[ServerEvent]) -> None:
        """Forward applied server events, each durable one once (by pos)."""
        bus = self.session.bus
        if not bus.listening:
            # Nobody listens (a daemon, a bulk catch-up): only the presence hint matters.
            if not self.presence_stale:
                self.presence_stale = any(isinstance(ev, ConversationUpdated) for ev in events)
            return
        seen = self._seen_pos
        for ev in events:
            if isinstance(ev, DurableEvent):
                if ev.pos in seen:
                    continue
                if isinstance(ev, ConversationUpdated):
                    # New contacts: their current presence is only in the snapshot.
                    self.presence_stale = True
                seen[ev.pos] = None
                if len(seen) > _SEEN_POS_MAX:
                    seen.popitem(last=False)
            bus.emit(ev)

    # --- applying -----------------------------------------------------------------------

    async def apply_events(
        self, events: Sequence[ServerEvent], *, cursor: int | None, synced: bool = False
    ) -> None:
        """:meth:`apply_safely`, on a worker thread when the batch is large."""
        if len(events) >= _THREAD_APPLY_MIN:
            await asyncio.to_thread(self.apply_safely, events, cursor=cursor, synced=synced)
        else:
            self.apply_safely(events, cursor=cursor, synced=synced)

    def apply_safely(
        self, events: Sequence[ServerEvent], *, cursor: int | None, synced: bool = False
    ) -> None:
        """Apply events; a poison event (one the store refuses) is isolated by bisection,
        quarantined, and passed over so the cursor moves on."""
        store = self.session.require_store()
        try:
            store.apply_events(events, cursor=cursor, synced=synced)
        except (StoreFull, StoreLocked, StoreCorrupt):
            raise
        except StoreError as exc:
            if len(events) <= 1:
                raw = orjson.dumps(events[0], default=repr).decode() if events else ""
                store.quarantine(raw, str(exc), getattr(events[0], "pos", None) if events else None)
                store.apply_events([], cursor=cursor, synced=synced)
                return
            mid = len(events) // 2
            self.apply_safely(events[:mid], cursor=None)
            self.apply_safely(events[mid:], cursor=cursor, synced=synced)

    async def history_page(
        self, conversation_id: str, *, before: int | None, limit: int, connected: bool
    ) -> HistoryPage:
        """A page of messages from the store, back-filled from the server when short."""
        store = self.session.require_store()
        transport = self.session.transport
        local, lowest, complete = store.page(conversation_id, before=before, limit=limit)
        server_msgs = [m for m in local if m.seq is not None]
        from_store = True
        if len(server_msgs) < limit and not complete and connected and transport is not None:
            anchor = server_msgs[0].seq if server_msgs else before
            if anchor is None:
                anchor = store.lowest_seq(conversation_id)
            try:
                page = await transport.history(
                    conversation_id, anchor, limit - len(server_msgs) if server_msgs else limit
                )
            except (TransportError, Rejected, WireError) as exc:
                log.info("history backfill failed: %s", exc)
            else:
                store.apply_history(page.messages)
                if page.end_of_history:
                    store.set_history_complete(conversation_id)
                    complete = True
                from_store = False
                local, lowest, _ = store.page(conversation_id, before=before, limit=limit)
                server_msgs = [m for m in local if m.seq is not None]
        first = server_msgs[0].seq if server_msgs else None
        older_local = first is not None and lowest is not None and lowest < first
        return HistoryPage(
            messages=tuple(local),
            has_more=older_local or not complete,
            from_store=from_store,
            end_of_history=complete and not older_local,
        )

    # --- push ---------------------------------------------------------------------------

    async def push_all(self) -> int:
        """Push everything due. Returns how many operations the server acknowledged."""
        transport = self.session.require_transport()
        total = 0
        async with self._push_lock:
            while True:
                items = self.session.require_store().claim(
                    self.session.config.push_batch, now=time.time()
                )
                if not items:
                    return total
                acked, stop = await self._push_items(transport, items)
                total += acked
                if stop:
                    return total

    async def _push_items(
        self, transport: Transport, items: Sequence[OutboxItem]
    ) -> tuple[int, bool]:
        """Push one claimed batch. Returns (acknowledged, stop pushing for now)."""
        session = self.session
        store = session.require_store()
        ids = [i.op_id for i in items]
        try:
            results = await transport.push(session.core.push_request(items)["ops"])
        except RateLimited as exc:
            wait = exc.retry_after if exc.retry_after is not None else session.policy.delay(exc)
            store.mark_retry(ids, str(exc), time.time() + wait)
            return 0, True
        except Rejected as exc:
            # The request as a whole was refused (e.g. one malformed op): isolate the culprit
            # by bisection so the rest keep flowing (one bad item must not stall the queue).
            if len(items) == 1:
                self._fail(items[0], exc.code, exc.reason)
                return 0, False
            mid = len(items) // 2
            a, stop_a = await self._push_items(transport, items[:mid])
            if stop_a:
                store.mark_retry([i.op_id for i in items[mid:]], "deferred", time.time())
                return a, True
            b, stop_b = await self._push_items(transport, items[mid:])
            return a + b, stop_b
        except TransportError as exc:
            # Transient: the items go back to PENDING with the same op ids; the server
            # deduplicates the replay (G2). While the live link is healthy, a failed push
            # does not tear it down: the items are retried on a timer (not on the next
            # write, which may never come), and a live echo may confirm them first.
            if session.core.state is ConnectionState.LIVE and session.link is not None:
                delay = self.op_policy.delay(exc)
                store.mark_retry(ids, f"{type(exc).__name__}: {exc}", time.time() + delay)
                return 0, True
            with contextlib.suppress(StoreError):
                store.mark_retry(ids, f"{type(exc).__name__}: {exc}", time.time())
            raise
        except BaseException as exc:
            # Auth failure or cancellation: back to PENDING, replayed later (G2).
            with contextlib.suppress(StoreError):
                store.mark_retry(ids, f"{type(exc).__name__}: {exc}", time.time())
            raise
        self.op_policy.reset()
        outcome = session.core.receive_push_results(items, results)
        by_id = {i.op_id: i for i in items}
        # One transaction for the whole batch of acknowledgements (not one commit each).
        moved = store.mark_sent_many(outcome.sent)
        for res, changed in zip(outcome.sent, moved, strict=True):
            if changed and by_id[res.op_id].kind is OpKind.SEND:
                session.bus.emit(
                    MessageSent(
                        op_id=res.op_id,
                        conversation_id=by_id[res.op_id].conversation_id,
                        message_id=res.message_id or "",
                        seq=res.seq or 0,
                    )
                )
        for op_id, code, reason in outcome.failed:
            self._fail(by_id[op_id], code, reason)
        if outcome.retry:
            delay = session.policy.delay(TransportError("operation deferred by the server"))
            store.mark_retry(outcome.retry, "deferred by the server", time.time() + delay)
        return len(outcome.sent), False

    def _fail(self, item: OutboxItem, code: str, reason: str) -> None:
        if self.session.require_store().mark_failed(item.op_id, code, reason):
            log.warning("operation %s (%s) rejected: %s: %s", item.op_id, item.kind, code, reason)
            self.session.bus.emit(
                MessageFailed(
                    op_id=item.op_id, conversation_id=item.conversation_id, code=code, reason=reason
                )
            )

    # --- pull ---------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Pull pages from the cursor until caught up. Returns the number of events pulled.

        The next page is requested before the current one is applied, so the server's work,
        the transfer and the decoding overlap the commit (SQLite is the binding stage). Pages
        are still applied one at a time, in order, each with its cursor (G3).
        """
        session = self.session
        transport = session.require_transport()
        core = session.core
        page_size = session.config.page_size
        loop = asyncio.get_running_loop()
        pulled = 0
        async with self._pull_lock:
            ahead: asyncio.Task[EventPage] | None = None
            while True:
                try:
                    if ahead is not None:
                        page = await ahead
                    else:
                        page = await transport.pull(core.cursor, page_size)
                except CursorExpired:
                    ahead = None
                    await self._resync(transport)
                    continue
                ahead = None
                if page.has_more:
                    since = max(page.next, core.cursor)
                    ahead = loop.create_task(transport.pull(since, page_size))
                try:
                    await self._apply_page(page)
                except BaseException:
                    if ahead is not None:
                        ahead.cancel()
                        with contextlib.suppress(BaseException):
                            await ahead
                    raise
                pulled += len(page.events)
                if core.receive_page(page):  # no more: nothing was requested ahead
                    return pulled

    async def _apply_page(self, page: EventPage) -> None:
        cursor = max(page.next, self.session.core.cursor)
        await self.apply_events(page.events, cursor=cursor, synced=not page.has_more)
        for raw, error in page.bad:
            self.session.require_store().quarantine(raw, error)
        self.emit_new(page.events)

    async def _resync(self, transport: Transport) -> None:
        """The cursor expired (G5): rebuild from a snapshot, then emit one Discontinuity."""
        session = self.session
        store = session.require_store()
        old = session.core.cursor
        log.warning("cursor %s expired on the server: resyncing", old)
        convs, head = await transport.conversations()
        store.replace_conversations(convs)
        for conv in convs:
            before: int | None = None
            while True:
                page = await transport.history(conv["id"], before, 200)
                store.apply_history(page.messages)
                if page.end_of_history or not page.messages:
                    store.set_history_complete(conv["id"])
                    break
                before = page.messages[0].seq
        store.reset_cursor(head)
        session.core.resynced(head)
        session.core.known_seq = {c.id: c.last_seq for c in store.conversations() if c.last_seq}
        session.bus.emit(Discontinuity(old_cursor=old, new_cursor=head))
