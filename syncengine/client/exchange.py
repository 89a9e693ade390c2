"""Push and pull: the request/response exchanges of a session, and applying what they bring.

Every decision here is the sync protocol's (:mod:`syncengine.core.sync`): this module performs
the requests it asks for, feeds the answers back and applies the writes it hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from syncengine.client.catchup import CatchUp
from syncengine.core.history import backfill_request, history_page
from syncengine.core.push import PushRound, PushStep
from syncengine.core.requests import ConversationsSnapshot
from syncengine.core.unordered import for_app
from syncengine.errors import (
    CursorExpired,
    Rejected,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    TransportError,
    WireError,
)
from syncengine.events import MessageFailed, MessageSent, ServerEvent
from syncengine.models import HistoryPage, OpKind, OutboxItem
from syncengine.transport.base import Transport

if TYPE_CHECKING:
    from syncengine.client.bus import EventBus
    from syncengine.client.config import EngineConfig
    from syncengine.core.sync import SyncProtocol
    from syncengine.store import Store

__all__ = ["Exchange", "known_seqs"]

log = logging.getLogger("syncengine.engine")

# Batches of at least this many events are committed on a worker thread: sqlite3 releases the
# GIL while SQLite works and a commit mostly waits for the disk, so receiving and decoding go
# on meanwhile. Smaller ones are committed on the loop (a thread hop costs ~50 µs).
_THREAD_APPLY_MIN = 64


def known_seqs(store: Store) -> dict[str, int]:
    """The highest seq stored per conversation (the protocol's gap detection starts here)."""
    from syncengine.store.store import known_seqs as stored_seqs

    return stored_seqs(store)


class SessionView(Protocol):
    """What an :class:`Exchange` needs of its session (it is not imported: no cycle)."""

    config: EngineConfig
    bus: EventBus
    core: SyncProtocol
    transport: Transport | None

    def require_store(self) -> Store: ...

    def require_transport(self) -> Transport: ...


class Exchange:
    """Pushes the outbox, pulls pages and resyncs for a session."""

    def __init__(self, session: SessionView) -> None:
        self.session = session
        self._push_lock = asyncio.Lock()
        self._pull_lock = asyncio.Lock()
        #: Operations acknowledged and events pulled since the session opened, in memory:
        #: a one-shot sync that waits out a 429 and goes again reports its whole work, and
        #: its progress bar reads these instead of the store.
        self.pushed_total = 0
        self.pulled_total = 0

    # --- emitting -----------------------------------------------------------------------

    def emit_new(self, events: Sequence[ServerEvent]) -> None:
        """Forward applied server events to the app, as the protocol filters them."""
        bus = self.session.bus
        for ev in self.session.core.receive_applied(events, listening=bus.listening):
            bus.emit(for_app(ev))  # a Matrix Gap: a per-conversation Discontinuity

    # --- applying -----------------------------------------------------------------------

    async def apply_events(
        self, events: Sequence[ServerEvent], *, cursor: Any, synced: bool = False
    ) -> None:
        """:meth:`apply_safely`, on a worker thread when the batch is large."""
        if len(events) >= _THREAD_APPLY_MIN:
            await asyncio.to_thread(self.apply_safely, events, cursor=cursor, synced=synced)
        else:
            self.apply_safely(events, cursor=cursor, synced=synced)

    def apply_safely(
        self, events: Sequence[ServerEvent], *, cursor: Any, synced: bool = False
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
        request = backfill_request(
            conversation_id,
            local,
            before=before,
            limit=limit,
            complete=complete,
            connected=connected and transport is not None,
            lowest_stored=lambda: store.lowest_seq(conversation_id),
        )
        if request is None or transport is None:
            return history_page(local, lowest, complete=complete, from_store=True)
        try:
            page = await transport.history(request.conversation_id, request.before, request.limit)
        except (TransportError, Rejected, WireError) as exc:
            log.info("history backfill failed: %s", exc)
            return history_page(local, lowest, complete=complete, from_store=True)
        store.apply_history(page.messages)
        if page.end_of_history:
            store.set_history_complete(conversation_id)
            complete = True
        local, lowest, _ = store.page(conversation_id, before=before, limit=limit)
        return history_page(local, lowest, complete=complete, from_store=False)

    # --- push ---------------------------------------------------------------------------

    async def push_all(self) -> int:
        """Push everything due. Returns how many operations the server acknowledged."""
        session = self.session
        transport = session.require_transport()
        core = session.core
        total = 0
        async with self._push_lock:
            while True:
                items = session.require_store().claim(core.push_batch, now=time.time())
                if not items:
                    return total
                push = core.push_round(items)
                await self._push_round(transport, push)
                total += push.acked
                self.pushed_total += push.acked
                if push.stopped:
                    return total

    async def _push_round(self, transport: Transport, push: PushRound) -> None:
        """Perform the requests of one push round and apply its writes."""
        core = self.session.core
        while (batch := push.next_batch()) is not None:
            try:
                results = await transport.push(core.push_request(batch)["ops"])
            except BaseException as exc:
                step = push.receive_error(exc, time.time())
                if not step.reraise:
                    self._write_push(step, batch)
                    continue
                with contextlib.suppress(StoreError):
                    self._write_push(step, batch)
                raise
            self._write_push(push.receive_results(results, time.time()), batch)

    def _write_push(self, step: PushStep, batch: Sequence[OutboxItem]) -> None:
        session = self.session
        store = session.require_store()
        if step.sent:
            by_id = {i.op_id: i for i in batch}
            # One transaction for the whole batch of acknowledgements (not one commit each).
            moved = store.mark_sent_many(step.sent)
            for res, changed in zip(step.sent, moved, strict=True):
                item = by_id[res.op_id]
                if changed and item.kind is OpKind.SEND:
                    session.bus.emit(
                        MessageSent(
                            op_id=res.op_id,
                            conversation_id=item.conversation_id,
                            message_id=res.message_id or "",
                            seq=res.seq or 0,
                        )
                    )
        for failed in step.failed:
            self._fail(failed.item, failed.code, failed.reason)
        for retry in step.retry:
            store.mark_retry(retry.op_ids, retry.reason, retry.at)

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

        Pages are pulled ahead on the loop while one long-lived thread applies them, in
        order, each with its cursor in one transaction (G3); see
        :mod:`syncengine.client.catchup`.
        """
        transport = self.session.require_transport()
        async with self._pull_lock:
            return await CatchUp(self, transport).run()

    async def _resync(self, transport: Transport) -> None:
        """The cursor expired (G5): follow the protocol's plan, then emit one Discontinuity."""
        session = self.session
        store = session.require_store()
        plan = session.core.start_resync()
        log.warning("cursor %s expired on the server: resyncing", plan.old_cursor)
        while (request := plan.next_request()) is not None:
            if isinstance(request, ConversationsSnapshot):
                convs, head = await transport.conversations()
                store.replace_conversations(convs)
                plan.receive_snapshot(convs, head)
                continue
            page = await transport.history(request.conversation_id, request.before, request.limit)
            writes = plan.receive_history(page)
            store.apply_history(writes.messages)
            if writes.complete:
                store.set_history_complete(writes.conversation_id)
        head = plan.new_cursor()
        store.reset_cursor(head)
        session.bus.emit(session.core.resynced(head, known_seqs(store)))
