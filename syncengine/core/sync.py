"""The sync protocol, sans I/O.

Rules of this file: every transition of the connection and of an outbox item is listed in
the two tables below, and nothing else moves a state; a move outside the table raises
:class:`IllegalTransition` (the caller's bug, as h11's ``LocalProtocolError``).
``docs/architecture.md`` draws its diagrams from these tables (``python -m syncengine.core.sync``
prints them as Mermaid).

:class:`SyncProtocol` makes every decision of a sync session, in the style of websockets'
``Protocol``: it is fed what the server said and what the app did (``receive_*``, ``tick(now)``)
and answers with what to do next: requests to send (``pull_request()``, ``push_round()``,
``tick()``), what to store (the cursor a batch commits with, push writes, the resync plan),
events for the app (:meth:`SyncProtocol.receive_applied`) and the next wake-up
(:meth:`SyncProtocol.next_wakeup`). It keeps no sockets, no SQLite and no clock: the driver
(``client/session.py``) passes ``now`` in and performs the I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from syncengine.core.backoff import Backoff, retry_after
from syncengine.core.cursor import V1, Cursor, TransportCapabilities, later
from syncengine.core.emit import EmitFilter
from syncengine.core.push import PushOutcome, PushRound, PushWindow, op_to_wire, sort_results
from syncengine.core.requests import CatchUp, PresenceSnapshot, Request
from syncengine.core.resync import Resync
from syncengine.core.schedule import Schedule, SyncSettings
from syncengine.core.unordered import link_owns_cursor
from syncengine.errors import UsageError
from syncengine.events import ConnectionStateChanged, Discontinuity, DurableEvent, ServerEvent
from syncengine.models import ConnectionState as CS
from syncengine.models import OutboxItem, OutboxState
from syncengine.wire import EventPage, OpResult

__all__ = [
    "CONNECTION_TRANSITIONS",
    "OUTBOX_TRANSITIONS",
    "IllegalTransition",
    "LiveDecision",
    "PushOutcome",
    "SyncCore",
    "SyncProtocol",
    "check_transition",
    "mermaid",
    "op_to_wire",
]

#: Every allowed connection-state transition, with the reason it happens.
CONNECTION_TRANSITIONS: dict[tuple[CS, CS], str] = {
    (CS.OFFLINE, CS.CONNECTING): "start, or network back",
    (CS.CONNECTING, CS.SYNCING): "server reached",
    (CS.CONNECTING, CS.BACKOFF): "connect failed (transient)",
    (CS.CONNECTING, CS.FAILED): "credentials refused",
    (CS.CONNECTING, CS.OFFLINE): "closed",
    (CS.SYNCING, CS.LIVE): "push done and caught up",
    (CS.SYNCING, CS.BACKOFF): "link lost or server error",
    (CS.SYNCING, CS.FAILED): "credentials refused",
    (CS.SYNCING, CS.OFFLINE): "closed",
    (CS.LIVE, CS.SYNCING): "gap, outbox work or poll",
    (CS.LIVE, CS.BACKOFF): "link lost or heartbeat missed",
    (CS.LIVE, CS.FAILED): "credentials refused",
    (CS.LIVE, CS.OFFLINE): "closed",
    (CS.BACKOFF, CS.CONNECTING): "backoff elapsed",
    (CS.BACKOFF, CS.FAILED): "credentials refused",
    (CS.BACKOFF, CS.OFFLINE): "closed",
    (CS.FAILED, CS.CONNECTING): "logged in again",
    (CS.FAILED, CS.OFFLINE): "closed or logged out",
}

#: Every allowed outbox-item transition, with the reason it happens.
OUTBOX_TRANSITIONS: dict[tuple[OutboxState, OutboxState], str] = {
    (OutboxState.PENDING, OutboxState.SENDING): "claimed for a push",
    (OutboxState.PENDING, OutboxState.SENT): "server copy seen (echo) before the push",
    (OutboxState.SENDING, OutboxState.SENT): "acknowledged (applied or duplicate)",
    (OutboxState.SENDING, OutboxState.FAILED): "permanent rejection",
    (OutboxState.SENDING, OutboxState.PENDING): "transient failure, or crash recovery",
    (OutboxState.FAILED, OutboxState.PENDING): "retry requested",
}


class IllegalTransition(UsageError):
    """A connection move the transition table forbids was asked for.

    Like h11's ``LocalProtocolError``: the caller misused the protocol (a bug to fix, never a
    condition to log and carry on from). The state is left unchanged.

    Attributes:
        old, new: the refused move.
    """

    def __init__(self, old: CS, new: CS) -> None:
        super().__init__(f"no connection transition {old.value} -> {new.value}")
        self.old = old
        self.new = new


def check_transition(old: CS, new: CS) -> str:
    """The reason for ``old -> new``.

    Raises:
        IllegalTransition: the move is not in :data:`CONNECTION_TRANSITIONS`.
    """
    try:
        return CONNECTION_TRANSITIONS[(old, new)]
    except KeyError:
        raise IllegalTransition(old, new) from None


def mermaid(table: dict[tuple[Any, Any], str]) -> str:
    """A Mermaid ``stateDiagram-v2`` of a transition table."""
    lines = ["stateDiagram-v2"]
    for (old, new), why in table.items():
        lines.append(f"    {old.name} --> {new.name}: {why}")
    return "\n".join(lines)


@attrs.frozen
class LiveDecision:
    """What to do with one live durable event.

    Attributes:
        cursor: advance the persisted cursor to this (None: leave it).
        gap: a seq jump was seen: pull from the cursor now.
    """

    cursor: Cursor | None
    gap: bool


class SyncProtocol:
    """Every decision of syncing one account, sans I/O.

    Args:
        cursor: the persisted stream position.
        known_seq: highest seq stored per conversation (for gap detection).
        push_batch: operations per push request (overrides ``settings``).
        page_limit: events per pull request (overrides ``settings``).
        settings: the timers and sizes (default: :class:`SyncSettings`'s defaults).
        capabilities: what the transport's positions mean (default: protocol v1).
        rng: the random source of backoff jitter.
    """

    def __init__(
        self,
        *,
        cursor: Cursor = 0,
        known_seq: dict[str, int] | None = None,
        push_batch: int | None = None,
        page_limit: int | None = None,
        settings: SyncSettings | None = None,
        capabilities: TransportCapabilities = V1,
        rng: Callable[[], float] = random.random,
    ) -> None:
        s = settings or SyncSettings()
        if push_batch is not None or page_limit is not None:
            s = attrs.evolve(
                s,
                push_batch=s.push_batch if push_batch is None else push_batch,
                page_limit=s.page_limit if page_limit is None else page_limit,
            )
        self.settings = s
        self.capabilities = capabilities
        self.state = CS.OFFLINE
        self.cursor: Cursor = cursor
        self.known_seq: dict[str, int] = dict(known_seq or {})
        self.live_head: Cursor | None = None
        self.link_up = False
        self.caught_up = False
        self.gaps: set[str] = set()
        # The highest pos a live decision handed out, committed or not (see receive_live).
        self._live_decided = 0
        self.schedule = Schedule(s, rng=rng)
        # The highest stream position known to exist on the server (ready frame, live
        # events, the end of a pull): what ``lag`` is measured against.
        self.server_head: Cursor | None = None
        self.server_reached = False
        self.emit_filter = EmitFilter()
        # Waits after a failed request while the session stays up (a push or a pull).
        self.op_backoff = Backoff(base=s.backoff_base_s, cap=s.backoff_cap_s, rng=rng)
        # Waits for operations the server deferred or rate-limited; reset once LIVE.
        self.defer_backoff = Backoff(base=s.backoff_base_s, cap=s.backoff_cap_s, rng=rng)
        self.push_window = PushWindow(s.push_batch)

    @property
    def push_batch(self) -> int:
        """Operations to claim for the next push request: the configured batch, or less
        while a batch the server refused as a whole is being bisected."""
        return self.push_window.size

    @property
    def page_limit(self) -> int:
        """Events per pull request."""
        return self.settings.page_limit

    # --- connection state -------------------------------------------------------------------

    def transition(self, new: CS, reason: str = "") -> ConnectionStateChanged | None:
        """Move to ``new``. None when already there.

        Raises:
            IllegalTransition: the move is not in the table (the state does not change).
        """
        old = self.state
        if old is new:
            return None
        why = check_transition(old, new)
        self.state = new
        if new is CS.LIVE:
            self.defer_backoff.reset()
        return ConnectionStateChanged(old=old, new=new, reason=reason or why)

    def receive_capabilities(self, capabilities: TransportCapabilities) -> None:
        """The transport reported what its positions mean."""
        self.capabilities = capabilities

    def restore(self, cursor: Cursor, known_seq: dict[str, int]) -> None:
        """Start from what the store holds (at open, and at each session start).

        The persisted cursor is the truth: the in-memory one may follow live events whose
        batch then failed to commit (disk full, store locked), and pulling from it would
        skip those events for good (G3: events and cursor are committed together).
        """
        self.cursor = cursor
        self.known_seq = dict(known_seq)

    def connection_lost(self) -> None:
        """The live link is gone (or a session starts): live events no longer prove
        contiguity, and the server is not known to answer until it does again."""
        self.live_head = None
        self.link_up = False
        self.caught_up = False
        self._live_decided = 0
        self.server_reached = False

    def server_answered(self) -> None:
        """The server answered a REST request in this session: REST works (without a live
        link, the session polls rather than being offline)."""
        self.server_reached = True

    @property
    def link_owns_cursor(self) -> bool:
        """The live link moves the cursor (opaque tokens): no pull may run beside it."""
        return link_owns_cursor(self.capabilities, self.link_up)

    def reached_live(self, now: float) -> None:
        """The session pushed and caught up (state LIVE): start the pull timers."""
        self.schedule.reached_live(now, live=self.live_head is not None)

    def live_try_started(self) -> None:
        """A live handshake was started (at a session's start, or a retry while polling)."""
        self.schedule.live_try_started()

    def receive_live_failed(self, now: float) -> float:
        """A live handshake failed while REST works: returns the wait before the next try."""
        return self.schedule.live_failed(now)

    def live_retry_in(self, now: float) -> float | None:
        """Seconds until the next live try is due (None: none is planned)."""
        due = self.schedule.next_live_try
        return None if due == float("inf") else max(0.0, due - now)

    # --- health -----------------------------------------------------------------------------

    def _saw_head(self, pos: Cursor | None) -> None:
        if pos is None or not self.capabilities.ordered_cursor:
            return
        if self.server_head is None or pos > self.server_head:  # type: ignore[operator]
            self.server_head = pos

    @property
    def lag(self) -> int:
        """Stream positions between the cursor and the server's head as last known (0 when
        positions are opaque, or nothing is known of the head)."""
        head, cursor = self.server_head, self.cursor
        if type(head) is not int or type(cursor) is not int:
            return 0
        return max(0, head - cursor)

    # --- push -------------------------------------------------------------------------------

    def push_request(self, items: Sequence[OutboxItem]) -> dict[str, Any]:
        """Body of ``POST /v1/ops`` for the claimed items."""
        return {"ops": [op_to_wire(i) for i in items]}

    def receive_push_results(
        self, items: Sequence[OutboxItem], results: Iterable[OpResult]
    ) -> PushOutcome:
        """Sort per-operation results into sent, failed (permanent) and retry (transient).

        An item the server did not answer for is retried (never assumed sent).
        """
        return sort_results(items, results)

    def push_round(self, items: Sequence[OutboxItem]) -> PushRound:
        """Push a claimed batch: bisection of a refused request, Retry-After, writes."""
        # LIVE, over the link or polling: a failed push is retried on a timer while the
        # session stays up (a live echo or the next poll may confirm the items first).
        live = self.state is CS.LIVE
        return PushRound(
            items,
            live=live,
            op_backoff=self.op_backoff,
            defer_backoff=self.defer_backoff,
            window=self.push_window,
        )

    # --- pull -------------------------------------------------------------------------------

    def pull_request(self) -> dict[str, Any]:
        """Query of the next ``GET /v1/events``."""
        return {"since": self.cursor, "limit": self.settings.page_limit}

    def prefetch_request(self, page: EventPage) -> dict[str, Any] | None:
        """Query of the page after ``page``, asked before ``page`` is applied (the server's
        work, the transfer and the decoding overlap the commit); None when it was the last."""
        if not page.has_more:
            return None
        return {"since": self.page_cursor(page), "limit": self.settings.page_limit}

    def page_cursor(self, page: EventPage) -> Cursor:
        """The cursor a page is committed with (in the same transaction as its events)."""
        return later(self.cursor, page.next, self.capabilities)

    def receive_page(self, page: EventPage) -> bool:
        """Account for a pulled page (already applied with its cursor). True when caught up."""
        nxt = later(self.cursor, page.next, self.capabilities)
        if nxt != page.next:
            # A server must never move the cursor back; keep ours (G3: never behind stored).
            return not page.has_more
        self.cursor = nxt
        self._note_seqs(page.events)
        if not page.has_more:
            self._saw_head(nxt)
            # Live events may move an ordered cursor only: an opaque token is the server's.
            self.caught_up = self.live_head is not None and self.capabilities.ordered_cursor
            self.gaps.clear()
            return True
        return False

    def _note_seqs(self, events: Iterable[ServerEvent]) -> None:
        known = self.known_seq
        for ev in events:
            if (
                isinstance(ev, DurableEvent)
                and ev.seq is not None
                and known.get(ev.conversation_id, 0) < ev.seq
            ):
                known[ev.conversation_id] = ev.seq

    def receive_pull_done(self, now: float) -> None:
        """A catch-up the timer asked for ended well."""
        self.schedule.pull_done(now)

    def receive_pull_failed(self, exc: BaseException, now: float) -> float:
        """A catch-up failed while the live link stays up: returns the wait before the next
        try (the server's Retry-After honoured); no urgent pull happens before then."""
        delay = self.op_backoff.next(retry_after(exc))
        self.schedule.pull_failed(now, delay)
        return delay

    def receive_presence_failed(self, exc: BaseException, now: float) -> float:
        """A presence snapshot failed while the live link stays up: it is still wanted, and
        is tried again after the returned wait (the single-request backoff, the server's
        Retry-After honoured), as a failed pull is. A healthy link is not torn down for it."""
        delay = self.op_backoff.next(retry_after(exc))
        self.emit_filter.presence_stale = True
        self.schedule.presence_failed(now, delay)
        return delay

    # --- resync -----------------------------------------------------------------------------

    def start_resync(self, epoch: str = "") -> Resync:
        """A discontinuity (410, or another server epoch): the plan that rebuilds the store
        and takes it to ``epoch``."""
        return Resync(self.cursor, epoch)

    def resynced(self, head: Cursor, known_seq: dict[str, int] | None = None) -> Discontinuity:
        """A resync replaced the store's view as of ``head``; the event for the app."""
        old = self.cursor
        self.cursor = head
        self.server_head = None
        self._saw_head(head)
        self.caught_up = False
        self._live_decided = 0
        self.gaps.clear()
        if known_seq is not None:
            self.known_seq = dict(known_seq)
        return Discontinuity(old_cursor=old, new_cursor=head)

    # --- live -------------------------------------------------------------------------------

    def receive_ready(self, head: Cursor) -> None:
        """The live channel is subscribed; it will deliver every event after ``head``."""
        self.live_head = head
        self.link_up = True
        # A store already at or past the head needs no pull to prove contiguity: everything
        # up to the cursor is stored and the channel delivers everything after the head.
        cursor = self.cursor
        self.caught_up = (
            self.capabilities.ordered_cursor
            and type(head) is int
            and type(cursor) is int
            and cursor >= head
        )
        self._live_decided = 0
        self._saw_head(head)

    def receive_checkpoint(self, cursor: Cursor) -> Cursor | None:
        """The live stream delivered everything before ``cursor``: the cursor to commit with
        those events (None: this link does not own the cursor, pulls do). The first one
        means caught up: the link started from the persisted cursor."""
        if not self.link_owns_cursor:
            return None
        self.caught_up = True
        self.gaps.clear()
        return cursor

    def receive_live(self, event: DurableEvent) -> LiveDecision:
        """Decide about one live durable event (it is always applied: merging is idempotent).

        The cursor may follow live events only once a pull has caught up past the live head:
        from then on the server's in-order delivery proves nothing visible was skipped. A seq
        jump within a known conversation means something was missed: pull at once.

        The decision does not move :attr:`cursor` (the position pulls start from): the
        driver reports the commit with :meth:`committed`, so a pull running meanwhile can
        never persist a cursor past events whose commit then fails (G3).
        """
        if event.seq is None:
            # Numbered by the store (Matrix): nothing to detect; Checkpoints move the cursor.
            return LiveDecision(cursor=None, gap=False)
        cid = event.conversation_id
        last = self.known_seq.get(cid)
        gap = last is not None and event.seq > last + 1 and self.capabilities.dense_seq
        if last is None or event.seq > last:
            self.known_seq[cid] = event.seq
        if gap:
            self.gaps.add(cid)
            self.caught_up = False
            return LiveDecision(cursor=None, gap=True)
        # caught_up is only ever set with an ordered cursor (see receive_page), so the cursor
        # compares here.
        pos = event.pos
        if self.caught_up and pos is not None and pos > max(self.cursor, self._live_decided):  # type: ignore[operator]
            self._live_decided = pos
            return LiveDecision(cursor=pos, gap=False)
        return LiveDecision(cursor=None, gap=False)

    def receive_live_batch(self, durable: Sequence[DurableEvent]) -> tuple[Cursor | None, bool]:
        """Decide about a batch of live durable events, in arrival order.

        Returns:
            The cursor to commit the batch with (None: leave it) and whether a gap was seen.
        """
        cursor: Cursor | None = None
        gap = False
        for ev in durable:
            decision = self.receive_live(ev)
            if decision.cursor is not None:
                cursor = decision.cursor
            gap = gap or decision.gap
        if durable:
            self._saw_head(durable[-1].pos)
        return cursor, gap

    def committed(self, cursor: Cursor) -> None:
        """A live batch and its cursor were committed: pulls continue from there."""
        self.cursor = later(self.cursor, cursor, self.capabilities)

    def receive_bad_frame(self) -> None:
        """A malformed live frame was quarantined: it may have carried an event, so pull."""
        self.schedule.want_pull()

    def pull_after_attach(self) -> bool:
        """A link was just attached: must a pull cover the events before its head? Not when
        the store is already there, nor when the link owns the cursor (it streams from the
        persisted cursor itself, and no pull may run beside it)."""
        return not self.caught_up and not self.link_owns_cursor

    def live_attached(self) -> None:
        """The live channel is up (at a session's start or back while polling): pulls become
        a safety net again."""
        self.schedule.live_attached()

    # --- events for the app, timers ---------------------------------------------------------

    def receive_applied(
        self, events: Sequence[ServerEvent], *, listening: bool
    ) -> list[ServerEvent]:
        """The events of an applied batch to hand to the app, each durable one once."""
        return self.emit_filter.receive_applied(events, listening=listening)

    def tick(self, now: float, *, want_live: bool = False) -> list[Request]:
        """The requests due at ``now`` (monotonic seconds), in the order to perform them.

        Args:
            now: the monotonic time.
            want_live: the app asked for the live channel (it is retried while polling).
        """
        due = self.schedule.tick(
            now,
            gaps=bool(self.gaps),
            polling_wants_live=want_live and self.live_head is None,
        )
        if self.link_owns_cursor and any(isinstance(r, CatchUp) for r in due):
            # The link is the catch-up (it streams from the cursor): a pull beside it would
            # be a second producer of an unordered cursor. Count the pull as done.
            self.schedule.pull_done(now)
            due = [r for r in due if not isinstance(r, CatchUp)]
        if self.schedule.presence_due(now) and self.emit_filter.take_presence_stale():
            # After a catch-up (it may bring more changes), before a live reconnect.
            due.insert(1 if due and isinstance(due[0], CatchUp) else 0, PresenceSnapshot())
        return due

    def next_wakeup(self, now: float) -> float:
        """When :meth:`tick` must be called next, at the latest."""
        return self.schedule.next_wakeup(now)


#: The name the engine used before the protocol owned every decision.
SyncCore = SyncProtocol


if __name__ == "__main__":  # pragma: no cover
    print("## Connection states\n\n```mermaid")
    print(mermaid(CONNECTION_TRANSITIONS))
    print("```\n\n## Outbox item states\n\n```mermaid")
    print(mermaid(OUTBOX_TRANSITIONS))
    print("```")
