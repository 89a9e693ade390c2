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
from syncengine.core.emit import sent_by_echo
from syncengine.core.history import backfill_request, history_page
from syncengine.core.push import PushRound, PushStep
from syncengine.core.requests import ConversationsSnapshot
from syncengine.core.resync import Resync, readded_conversations
from syncengine.core.unordered import for_app
from syncengine.errors import (
    NotFound,
    Rejected,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    TransportError,
    WireError,
)
from syncengine.events import ConversationUpdated, MessageFailed, MessageSent, ServerEvent
from syncengine.models import HistoryPage, OpKind, OutboxItem
from syncengine.store import authority
from syncengine.store.store import known_seqs
from syncengine.transport.base import Transport

if TYPE_CHECKING:
    from syncengine.client.bus import EventBus
    from syncengine.client.config import EngineConfig
    from syncengine.core.sync import SyncProtocol
    from syncengine.store import Store
    from syncengine.wire import EventPage

__all__ = ["EPOCH_META", "RESYNC_META", "Exchange"]

#: The store's ``meta`` key of an unfinished resync's plan (JSON), to continue it.
RESYNC_META = "resync_plan"
#: The store's ``meta`` key of the server epoch the store is in step with.
EPOCH_META = "server_epoch"

log = logging.getLogger("syncengine.engine")

# Batches of at least this many events are committed on a worker thread: sqlite3 releases the
# GIL while SQLite works and a commit mostly waits for the disk, so receiving and decoding go
# on meanwhile. Smaller ones are committed on the loop (a thread hop costs ~50 µs).
_THREAD_APPLY_MIN = 64


def _present(seqs: dict[str, int | None]) -> dict[str, int]:
    return {k: v for k, v in seqs.items() if v is not None}


def _stored_members(store: Store, cid: str) -> tuple[str, ...] | None:
    """The members the store holds (() when the user is no longer one; None: unknown)."""
    if not store.has_conversation(cid):
        return None
    try:
        return store.conversation(cid).members
    except NotFound:
        return ()


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
        # (conversation, message) changed locally by an edit or delete the server refused.
        self._repair: list[tuple[str, str]] = []
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
        """:meth:`apply_safely`, on a worker thread when the batch is large; then the history
        of each conversation the batch adds the user back to is read again."""
        readded = self.readded(events)
        if len(events) >= _THREAD_APPLY_MIN:
            sent = await asyncio.to_thread(self.apply_safely, events, cursor=cursor, synced=synced)
        else:
            sent = self.apply_safely(events, cursor=cursor, synced=synced)
        self.emit_sent(events, sent)
        for cid in readded:
            await self._refill(cid)

    def readded(self, events: Sequence[ServerEvent]) -> list[str]:
        """The conversations these events (not yet applied) add the user back to: their
        history, missed while away, is read again once they are applied."""
        store = self.session.require_store()
        me = store.user
        updates = [
            (ev.conversation_id, tuple(ev.members))
            for ev in events
            if isinstance(ev, ConversationUpdated) and me in ev.members
        ]
        if not updates:
            return []
        return readded_conversations(
            updates, me, {cid: _stored_members(store, cid) for cid, _m in updates}
        )

    async def _refill(self, cid: str) -> None:
        """Read a conversation's history again, as a resync does (the user is back in it)."""
        transport = self.session.transport
        if transport is None:
            return
        store = self.session.require_store()
        plan = Resync(0)
        plan.receive_snapshot([{"id": cid}], 0, _present({cid: store.lowest_seq(cid)}))
        try:
            while (request := plan.next_request()) is not None:
                await self._resync_history(transport, plan, request)
        except (TransportError, Rejected, WireError) as exc:
            log.info("re-reading the history of %s failed: %s", cid, exc)

    def apply_safely(
        self, events: Sequence[ServerEvent], *, cursor: Any, synced: bool = False
    ) -> list[str]:
        """Apply events; a poison event (one the store refuses) is isolated by bisection,
        quarantined, and passed over so the cursor moves on.

        Returns:
            The op ids of own sends these events moved to SENT (``ApplyResult.sent_ops``).
        """
        store = self.session.require_store()
        try:
            return store.apply_events(events, cursor=cursor, synced=synced).sent_ops
        except (StoreFull, StoreLocked, StoreCorrupt):
            raise
        except StoreError as exc:
            if len(events) <= 1:
                raw = orjson.dumps(events[0], default=repr).decode() if events else ""
                store.quarantine(raw, str(exc), getattr(events[0], "pos", None) if events else None)
                store.apply_events([], cursor=cursor, synced=synced)
                return []
            mid = len(events) // 2
            first = self.apply_safely(events[:mid], cursor=None)
            return first + self.apply_safely(events[mid:], cursor=cursor, synced=synced)

    def emit_sent(self, events: Sequence[ServerEvent], sent: Sequence[str]) -> None:
        """Report the own sends whose echo (in ``events``, applied and committed) came
        before their acknowledgement: the ack will find them SENT and report nothing."""
        if sent:
            for ev in sent_by_echo(events, sent):
                self.session.bus.emit(ev)

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
                await self._repair_rejected(transport)
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
            mid = item.payload.get("message_id")
            if item.kind in (OpKind.EDIT, OpKind.DELETE) and mid:
                # Its local effect (hidden or changed text) is undone from the server's copy.
                self._repair.append((item.conversation_id, str(mid)))
            log.warning("operation %s (%s) rejected: %s: %s", item.op_id, item.kind, code, reason)
            self.session.bus.emit(
                MessageFailed(
                    op_id=item.op_id, conversation_id=item.conversation_id, code=code, reason=reason
                )
            )

    async def _repair_rejected(self, transport: Transport) -> None:
        """Re-fetch each message a rejected edit or delete changed locally and store the
        server's copy in its place (a failure leaves it for the next resync)."""
        store = self.session.require_store()
        if not hasattr(transport, "epoch"):
            self._repair.clear()  # only protocol v1 numbers messages: a seq names one
            return
        while self._repair:
            cid, mid = self._repair.pop(0)
            seq = store.authoritative(authority.message_seq, mid)
            if seq is None:
                continue
            try:
                page = await transport.history(cid, seq + 1, 1)
            except (TransportError, Rejected, WireError) as exc:
                log.info("re-fetching message %s failed: %s", mid, exc)
                continue
            mine = [m for m in page.messages if m.seq == seq]
            store.authoritative(authority.replace_range, cid, mine, low=seq, high=seq)

    # --- pull ---------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Pull pages from the cursor until caught up. Returns the number of events pulled.

        Pages are pulled ahead on the loop while one long-lived thread applies them, in
        order, each with its cursor in one transaction (G3); see
        :mod:`syncengine.client.catchup`.
        """
        transport = self.session.require_transport()
        async with self._pull_lock:
            catch_up = CatchUp(self, transport)
            pulled = await catch_up.run()
            for cid in dict.fromkeys(catch_up.readded):
                await self._refill(cid)
            return pulled

    def send_epoch(self, transport: Transport) -> None:
        """Pulls carry the epoch the store's cursor belongs to: the server refuses (410) a
        cursor that does not continue its log, and the resync follows."""
        if hasattr(transport, "epoch"):
            transport.epoch = self.session.require_store().get_meta(EPOCH_META)

    def keep_epoch(self, transport: Transport, page: EventPage) -> None:
        """A page the server served for the store's (epoch, cursor) continues its log: its
        epoch becomes the store's (a restart of the server begins a new one)."""
        if page.epoch and getattr(transport, "epoch", None) != page.epoch:
            self.session.require_store().set_meta(**{EPOCH_META: page.epoch})
            if hasattr(transport, "epoch"):
                transport.epoch = page.epoch

    async def _resync(self, transport: Transport, epoch: str = "") -> None:
        """A discontinuity (G5: the cursor expired, or the server's epoch changed): follow the
        protocol's plan, then emit one Discontinuity.

        The plan is saved in the store after every step, so a 429, a transport error or a
        restart continues from the page it stopped at instead of starting over.
        """
        session = self.session
        store = session.require_store()
        saved = store.get_meta(RESYNC_META)
        if saved:
            plan = Resync.restore(orjson.loads(saved))
            log.warning("continuing the resync from cursor %s", plan.old_cursor)
        else:
            plan = session.core.start_resync(epoch)
            log.warning("discontinuity at cursor %s: resyncing", plan.old_cursor)
        while (request := plan.next_request()) is not None:
            if isinstance(request, ConversationsSnapshot):
                convs, head = await transport.conversations()
                store.replace_conversations(convs)
                floors = {c["id"]: store.lowest_seq(c["id"]) for c in convs}
                plan.receive_snapshot(convs, head, _present(floors))
            else:
                await self._resync_history(transport, plan, request)
            store.set_meta(**{RESYNC_META: orjson.dumps(plan.state()).decode()})
        head = plan.new_cursor()
        store.reset_cursor(head)
        store.set_meta(**{RESYNC_META: None, EPOCH_META: plan.epoch or None})
        session.bus.emit(session.core.resynced(head, known_seqs(store)))

    async def _resync_history(self, transport: Transport, plan: Resync, request: Any) -> None:
        """One history page of the resync, applied as the server's copy of its range; a 404
        (the user left the conversation meanwhile) removes the conversation."""
        store = self.session.require_store()
        try:
            page = await transport.history(request.conversation_id, request.before, request.limit)
        except Rejected as exc:
            if exc.status not in (403, 404) and exc.code not in ("not_found", "forbidden"):
                raise
            gone = plan.receive_gone()
            log.info("conversation %s is gone (%s): removed", gone.conversation_id, exc.code)
            store.authoritative(authority.remove_conversation, gone.conversation_id)
            return
        w = plan.receive_history(page)
        if any(m.seq is None for m in w.messages):  # unnumbered (Matrix): merged as history
            store.apply_history(w.messages)
        store.authoritative(
            authority.replace_range,
            w.conversation_id,
            w.messages,
            low=w.low,
            high=w.high,
            last_seq=w.last_seq,
            drop_below=w.drop_below,
        )
        if w.complete:
            store.set_history_complete(w.conversation_id)
        elif w.high is None:
            store.set_meta(**{f"eoh:{w.conversation_id}": None})
