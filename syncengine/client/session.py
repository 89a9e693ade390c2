"""The session: one background task that keeps the account in sync.

Each connection attempt is a *session*:

1. CONNECTING: start the live handshake in the background (token in the first frame, its
   ``head`` from ``ready``; :mod:`syncengine.client.live_try`), bounded by the request
   timeout. Nothing waits for it.
2. SYNCING: push the outbox in batches (FIFO per conversation), then pull pages from the
   persisted cursor until caught up, each page applied with its cursor in one transaction.
   The link is adopted as soon as its handshake ends well (a short grace is given to one
   still under way); a handshake that fails leaves the session polling over REST.
3. LIVE: apply live events in small batches as they arrive; push whenever the outbox has
   due work (including work queued by another process, e.g. the CLI); pull at once on a seq
   gap; pull on a safety-net timer (or the poll interval when polling, with the live channel
   retried in the background with backoff).

A transient failure ends the session (so does a live link that dies, at once, even during a
REST request); stamina's retry loop waits a capped full-jitter backoff (our
:class:`~syncengine.core.policy.RetryPolicy`, honouring Retry-After) and starts the next one.
A refused token stops the loop in FAILED until the user logs in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import stamina

from syncengine.client import matrix_glue
from syncengine.client.bus import EventBus
from syncengine.client.config import EngineConfig
from syncengine.client.credentials import load_token
from syncengine.client.exchange import Exchange
from syncengine.client.health import HealthKeeper, error_doc, sync_mode
from syncengine.client.live_try import LiveTry
from syncengine.client.tasks import cancel_and_wait
from syncengine.core.cursor import V1
from syncengine.core.policy import RetryPolicy
from syncengine.core.requests import CatchUp, ConnectLive, PresenceSnapshot
from syncengine.core.schedule import LIVE_GRACE_S
from syncengine.core.sync import SyncProtocol
from syncengine.core.typing import TypingThrottle
from syncengine.errors import (
    AuthFailed,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    SyncEngineError,
    SyncStopped,
    TLSVerificationFailed,
    TransportError,
    UsageError,
    WireError,
)
from syncengine.events import DurableEvent, ServerEvent, UserPresenceChanged
from syncengine.local.lock import EngineClaim
from syncengine.models import ConnectionState
from syncengine.store import Store
from syncengine.store.store import known_seqs
from syncengine.transport.base import LiveLink, Transport, make_ssl_context

__all__ = ["Session"]

log = logging.getLogger("syncengine.engine")

_LIVE_BATCH = 500


class Session:
    """Moves data between the sync core, the transport and the store for one engine.

    Args:
        db_path: the store file (the token file sits beside it).
        config: the engine's settings.
        bus: where events for the app go.
    """

    def __init__(self, db_path: Path, config: EngineConfig, bus: EventBus) -> None:
        self.db_path = db_path
        self.config = config
        self.bus = bus
        self.core = SyncProtocol(settings=config.sync_settings())
        self.throttle = TypingThrottle()
        self.store: Store | None = None
        self.transport: Transport | None = None
        self.link: LiveLink | None = None
        self.live = LiveTry(self)
        self.keeper = HealthKeeper(self)
        self.claim = EngineClaim(db_path)
        self.presence_status: str | None = None
        self.last_error: str | None = None
        self.failure: SyncEngineError | None = None
        self.bad_frames = 0
        self.policy = RetryPolicy(
            base=config.backoff_base_s, cap=config.backoff_cap_s, on_backoff=self._on_backoff
        )
        self.exchange = Exchange(self)
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- plumbing -----------------------------------------------------------------------

    def open_store(self) -> Store:
        """Open the store; a syncing engine first becomes its one writer (G6): StoreLockHeld
        when another process (a daemon) or engine syncs it (this one then writes nothing)."""
        return self.claim.open(self.config.connect, lambda: self.attach_store(Store(self.db_path)))

    def attach_store(self, store: Store) -> Store:
        """Take the freshly opened store: the core starts from its cursor and seqs."""
        self.store = store
        self.core.restore(store.cursor(), known_seqs(store))
        if self.config.connect:
            # Only a syncing engine records the state that `syncengine status` shows; a
            # one-shot engine (the CLI) must not overwrite the daemon's.
            store.set_state(ConnectionState.OFFLINE)
            # Rows a crashed predecessor (kill -9) left SENDING are this process's now (one
            # writer per store: G6): replay them at once, deduplicated by the server (G2),
            # instead of leaving them - and their conversation's FIFO - stuck until the lease
            # runs out.
            store.recover_sending()
        return store

    async def close(self) -> None:
        """Stop, close the transport and the store. Nothing is left SENDING."""
        await self.stop()
        self.cancel_tasks()
        if self.transport is not None:
            await self.transport.aclose()
            self.transport = None
        if self.store is not None:
            with contextlib.suppress(StoreError):
                if self.config.connect:
                    # Only the syncing process owns SENDING rows (one writer per store: G6).
                    self.store.recover_sending()
                self.set_state(ConnectionState.OFFLINE, "closed")
            self.store.close()
            self.store = None
        self.claim.release()

    def require_store(self) -> Store:
        """The open store (UsageError when the engine is not open)."""
        if self.store is None:
            raise UsageError("the engine is not open: use 'async with SyncEngine(...)'")
        return self.store

    def require_transport(self) -> Transport:
        """The transport of a logged-in account (AuthFailed otherwise)."""
        if self.transport is None or load_token(self.db_path) is None:
            raise AuthFailed("not logged in: call login() first")
        return self.transport

    def make_transport(self, server: str) -> Transport:
        """Replace the transport with one for ``server`` (the old one is closed meanwhile)."""
        if self.transport is not None:
            old = self.transport
            self.transport = None
            self.spawn(old.aclose())
        cfg = self.config
        protocol = self.store.get_meta("protocol") if self.store is not None else None
        if cfg.transport_factory is not None:
            transport = matrix_glue.wrap(cfg.transport_factory(server), lambda: self.store)
        elif other := matrix_glue.build_transport(server, cfg, protocol, self.require_store):
            transport = other
        else:
            from syncengine.transport.rest import RestTransport

            ctx = make_ssl_context(cfg.ca_file) if server.startswith("https") else None
            transport = RestTransport(
                server,
                ssl_context=ctx,
                allow_insecure=cfg.allow_insecure,
                timeout_s=cfg.request_timeout_s,
                live_url=cfg.live_url,
                heartbeat_interval_s=cfg.heartbeat_interval_s,
                heartbeat_timeout_s=cfg.heartbeat_timeout_s,
            )
        self.transport = transport
        # A transport says what its positions mean; protocol v1's are the default.
        self.core.receive_capabilities(getattr(transport, "capabilities", V1))
        return transport

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; it is cancelled by :meth:`cancel_tasks`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_tasks(self) -> None:
        """Cancel every background task spawned so far."""
        for task in list(self._tasks):
            task.cancel()

    def kick(self) -> None:
        """Wake the live loop: the outbox has work, or a pull is wanted."""
        self._wake.set()

    @property
    def mode(self) -> str:
        """``live``, ``polling`` or ``offline`` (:func:`~syncengine.client.health.sync_mode`)."""
        core = self.core
        return sync_mode(core.state, link=self.link is not None, reached=core.server_reached)

    def set_state(self, new: ConnectionState, reason: str = "") -> None:
        """Move the connection state, record it (syncing engines only) and emit the change."""
        change = self.core.transition(new, reason)  # IllegalTransition: a bug here
        if change is None:
            return
        log.info("connection %s -> %s (%s)", change.old.value, change.new.value, change.reason)
        if new is ConnectionState.CONNECTING:
            self.keeper.notes.next_retry_at = None  # the retry is happening
        if self.store is not None and self.config.connect:
            with contextlib.suppress(StoreError):
                values = self.keeper.values()
                self.store.set_state(new, **values)
                self.keeper.recorded(values)
        self.bus.emit(change)

    def _on_backoff(self, exc: BaseException, delay: float) -> None:
        self.last_error = str(exc)
        self.keeper.notes.failed(error_doc(exc), delay)
        self.set_state(ConnectionState.BACKOFF, f"{exc} (retry in {delay:.1f}s)")

    # --- the runner ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the background sync loop (no-op when it runs)."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="syncengine-runner"
            )

    async def stop(self) -> None:
        """Stop the background sync loop; the state becomes OFFLINE unless FAILED."""
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self.store is not None and self.core.state is not ConnectionState.FAILED:
            self.set_state(ConnectionState.OFFLINE, "stopped")

    async def _run(self) -> None:
        try:
            async for attempt in stamina.retry_context(on=self.policy, attempts=None, timeout=None):
                with attempt:
                    await self._session()
        except AuthFailed as exc:
            self._stopped(exc, "credentials refused: log in again")
        except TLSVerificationFailed as exc:
            self._stopped(exc, str(exc))
        except StoreCorrupt as exc:
            self._stopped(exc, "store corrupt", record=False)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unclassified failure: report, do not spin
            log.exception("sync loop stopped")
            stopped = SyncStopped(f"{type(exc).__name__}: {exc}")
            stopped.__cause__ = exc
            self._stopped(stopped, str(stopped))

    def _stopped(self, exc: SyncEngineError, reason: str, *, record: bool = True) -> None:
        """The loop ended for good: keep the typed failure (supervisors act on its type)."""
        if record:
            self.last_error = str(exc)
        self.failure = exc
        self.set_state(ConnectionState.FAILED, reason)

    async def _session(self) -> None:
        # CONNECTING first: a token found missing here is "credentials refused", and the
        # table reaches FAILED from CONNECTING, not from OFFLINE.
        self.set_state(ConnectionState.CONNECTING)
        transport = self.require_transport()
        self.core.connection_lost()
        store = self.require_store()
        self.core.restore(store.cursor(), known_seqs(store))
        tasks: list[asyncio.Task[Any]] = []
        queue = _LiveBuffer()
        try:
            # The live handshake runs beside push and catch-up: whatever a middlebox does to
            # the upgrade, REST keeps the store current meanwhile.
            if self.config.use_live:
                self.live.start(transport)
            self.set_state(ConnectionState.SYNCING)
            if not await self._adopt_live(queue, tasks) and self.live.pending:
                self.keeper.live_pending()
            await matrix_glue.push_and_catch_up(self, tasks)
            # A handshake that ended during the catch-up is adopted here too, not only one
            # still under way: else the session reports LIVE polling with a link unread.
            if self.link is None and (self.live.pending or self.live.done):
                await self.live.wait(LIVE_GRACE_S)
                if await self._adopt_live(queue, tasks) and self.core.pull_after_attach():
                    await self.exchange.catch_up()  # from the cursor to past the live head
            await self._go_live(transport)
            await self._live_loop(transport, queue, tasks)
        except (StoreFull, StoreLocked) as exc:
            # The store refused a write: nothing was committed (cursor unchanged). Treat as
            # transient: back off and try again; the daemon keeps running.
            raise _StoreBusy(str(exc)) from exc
        finally:
            await self.live.cancel()
            await self._end_session(tasks)

    async def _go_live(self, transport: Transport) -> None:
        """Pushed and caught up: state LIVE (over the live channel, or polling)."""
        if self.link is not None and self.presence_status:
            await self.link.send_presence(self.presence_status)
        await refresh_presence(self.require_store(), transport)
        self.set_state(ConnectionState.LIVE, self.mode)
        self.policy.reset()
        self.core.reached_live(asyncio.get_running_loop().time())

    async def _adopt_live(self, queue: _LiveBuffer, tasks: list[asyncio.Task[Any]]) -> bool:
        """Attach the link of a handshake that ended well; True when one was attached."""
        link = self.live.take() if self.live.done else None
        if link is not None:
            self._attach_link(link, queue, tasks)
        return link is not None

    async def _end_session(self, tasks: list[asyncio.Task[Any]]) -> None:
        try:
            await cancel_and_wait(tasks)
        finally:
            if self.link is not None:
                await self.link.close()
            self.link = None
            self.core.connection_lost()
            self.throttle.reset()
            if self.store is not None:
                with contextlib.suppress(StoreError):
                    # A typing stop lost with the link must not leave others typing forever.
                    self.store.clear_typing()
                    self.store.recover_sending()

    def _attach_link(
        self, link: LiveLink, queue: _LiveBuffer, tasks: list[asyncio.Task[Any]]
    ) -> None:
        self.link = link
        self.core.receive_ready(link.head)
        self.core.live_attached()
        self.keeper.notes.recovered()
        self.keeper.record()
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(self._read_live(link, queue), name="syncengine-reader"))
        tasks.append(loop.create_task(self._apply_live(queue), name="syncengine-applier"))

    async def _live_loop(
        self, transport: Transport, queue: _LiveBuffer, tasks: list[asyncio.Task[Any]]
    ) -> None:
        """LIVE: push due work, and perform what the protocol says is due, until the link or
        the server fails."""
        while True:
            now = time_now()
            await self._wait(tasks, self.core.next_wakeup(now) - now)
            await watched(self._due_work(transport, queue, tasks), tasks)

    async def _due_work(
        self, transport: Transport, queue: _LiveBuffer, tasks: list[asyncio.Task[Any]]
    ) -> None:
        """One round of the live loop: adopt a new link, push, and what the protocol asks."""
        if self.live.done:
            await self._live_back(queue, tasks)
        if self.require_store().due_count(time.time()):
            await self.exchange.push_all()
        for request in self.core.tick(time_now(), want_live=self.config.use_live):
            if isinstance(request, CatchUp):
                await self._timed_catch_up()
            elif isinstance(request, PresenceSnapshot):
                await timed_presence(self, transport)
            elif isinstance(request, ConnectLive):
                self.live.start(transport)
        for cid, frame in self.throttle.tick(time.monotonic()):
            await self.send_typing(cid, frame)

    async def _timed_catch_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self.exchange.catch_up()
        except TransportError as exc:
            if self.link is None:
                raise  # polling: REST is the only channel, so the session is down
            # The live link is up: retry the pull on a timer instead of tearing it down.
            self.core.receive_pull_failed(exc, loop.time())
            log.info("pull failed while live, retrying: %s", exc)
        else:
            self.core.receive_pull_done(loop.time())
            self.keeper.record()

    async def _live_back(self, queue: _LiveBuffer, tasks: list[asyncio.Task[Any]]) -> None:
        """A handshake started while polling ended: when it brought a link, cover the events
        between the last poll and its head, and report LIVE over the channel."""
        if not await self._adopt_live(queue, tasks):
            return
        if self.core.pull_after_attach():
            await self.exchange.catch_up()  # cover events between the last poll and head
        self.set_state(ConnectionState.SYNCING, "live channel back")
        self.set_state(ConnectionState.LIVE, "live")

    async def _wait(self, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
        """Sleep until woken, a live task ends (its error is raised) or ``timeout``."""
        waiter = asyncio.get_running_loop().create_task(self._wake.wait())
        waited: list[asyncio.Future[Any]] = [waiter, *tasks]
        if self.live.pending and self.live.task is not None:
            waited.append(self.live.task)  # a handshake that ends is adopted at once
        await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        self._wake.clear()
        raise_if_ended(tasks)

    # --- the live channel ---------------------------------------------------------------

    async def _read_live(self, link: LiveLink, queue: _LiveBuffer) -> None:
        store = self.require_store()
        while True:
            try:
                event = await link.recv()
            except WireError as exc:
                # A malformed frame: keep it for inspection and go on; a pull covers any
                # durable event it may have carried.
                self.bad_frames += 1
                store.quarantine("<live frame>", str(exc))
                self.core.receive_bad_frame()
                self.kick()
                continue
            if event is not None:
                queue.put(event)

    async def _apply_live(self, queue: _LiveBuffer) -> None:
        """Apply what the reader queued, in arrival order, a batch at a time: the durable
        events in one transaction with the cursor, typing and presence in one more (one
        commit per event would cap a busy channel at the disk's commit rate)."""
        while True:
            batch = await queue.take(_LIVE_BATCH)
            if not self.core.capabilities.ordered_cursor:
                await matrix_glue.apply_unordered_batch(self, batch)
                continue
            durable = [ev for ev in batch if isinstance(ev, DurableEvent)]
            cursor, gap = self.core.receive_live_batch(durable)
            if durable:
                await self.exchange.apply_events(durable, cursor=cursor)
                if cursor is not None:
                    self.core.committed(cursor)  # only now may pulls start from it (G3)
            if len(durable) < len(batch):
                batch = apply_ephemeral(self.require_store(), batch)
            self.exchange.emit_new(batch)
            if gap:
                self.keeper.record()  # `syncengine status` shows the gap and the lag
                self.kick()

    async def send_typing(self, conversation_id: str, frame: bool) -> None:
        """Send one typing frame on the live link (dropped when there is none)."""
        await self.send_live(lambda link: link.send_typing(conversation_id, frame))

    async def send_live(self, make: Callable[[LiveLink], Any]) -> None:
        """Send a frame built by ``make`` on the live link; failures are logged, not raised."""
        link = self.link
        if link is None:
            return
        try:
            await make(link)
        except (TransportError, AuthFailed) as exc:
            log.info("live send failed: %s", exc)


def apply_ephemeral(store: Store, batch: list[ServerEvent]) -> list[ServerEvent]:
    """Record the typing and presence events of a batch; returns the batch less the
    events that were refused (a presence with an unknown status)."""
    ephemeral = [ev for ev in batch if not isinstance(ev, DurableEvent)]
    kept = store.apply_ephemeral(ephemeral)
    if len(kept) == len(ephemeral):
        return batch
    refused = {id(ev) for ev in ephemeral} - {id(ev) for ev in kept}
    for ev in ephemeral:
        if id(ev) in refused and isinstance(ev, UserPresenceChanged):
            log.info("ignored presence with unknown status %r", ev.status)
    return [ev for ev in batch if id(ev) not in refused]


def time_now() -> float:
    """The event loop's monotonic time (what the sync protocol's timers are on)."""
    return asyncio.get_running_loop().time()


def raise_if_ended(tasks: list[asyncio.Task[Any]]) -> None:
    """Raise the error of a live task (reader, applier) that ended: the link is gone."""
    for task in tasks:
        if task.done():
            exc = task.exception()
            raise exc if exc is not None else _LinkClosed("live channel ended")


async def watched(work: Coroutine[Any, Any, None], tasks: list[asyncio.Task[Any]]) -> None:
    """Run ``work`` (REST requests, store writes) while watching the live tasks.

    A live link that dies meanwhile ends the session at once: a request stuck on the same
    dead network would otherwise hold the news back until its own timeout, and a half-open
    link would be noticed seconds after its heartbeat said so. Work cut short is safe to
    cut: pushes in flight return to PENDING when the session ends, and pages commit with
    their cursor.
    """
    if not tasks:
        await work
        return
    job = asyncio.ensure_future(work)
    try:
        await asyncio.wait([job, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
    if not job.cancelled():
        job.result()  # the work's own error, if any
        return
    raise_if_ended(tasks)


async def timed_presence(session: Session, transport: Transport) -> None:
    """The presence snapshot the protocol asked for in the live loop."""
    try:
        await refresh_presence(session.require_store(), transport)
    except TransportError as exc:
        if session.link is None:
            raise  # polling: REST is the only channel, so the session is down
        # The live link is up (echoes and others' messages arrive on it): retry the snapshot
        # on a timer, as a failed pull is, instead of tearing the link down.
        session.core.receive_presence_failed(exc, time_now())
        log.info("presence refresh failed while live, retrying: %s", exc)


async def refresh_presence(store: Store, transport: Transport) -> None:
    """Apply the server's presence snapshot (live changes only cover what happens next)."""
    for item in await transport.presence():
        user, status, ts_ms = item.get("user"), item.get("status"), item.get("ts_ms", 0)
        last_seen = item.get("last_seen_ms")
        if not isinstance(user, str) or type(ts_ms) is not int:
            continue
        try:
            store.apply_presence(
                user,
                str(status),
                ts_ms=ts_ms,
                last_seen_ms=last_seen if type(last_seen) is int else None,
            )
        except ValueError:
            log.info("ignored presence with unknown status %r", status)


class _LiveBuffer:
    """The hand-off from the live reader to the applier: a list and a wake-up event.

    Cheaper per event than an ``asyncio.Queue`` (no future per item); the applier takes
    everything queued (up to a limit) as one batch, so bursts batch by themselves.
    """

    __slots__ = ("_items", "_ready")

    def __init__(self) -> None:
        self._items: list[ServerEvent] = []
        self._ready = asyncio.Event()

    def put(self, event: ServerEvent) -> None:
        self._items.append(event)
        if not self._ready.is_set():
            self._ready.set()

    async def take(self, limit: int) -> list[ServerEvent]:
        """Wait for at least one event; return up to ``limit`` of them, oldest first."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        batch, self._items = self._items[:limit], self._items[limit:]
        return batch


class _StoreBusy(TransportError):
    """The store refused a write for now (full or locked): retried like a transient error."""


class _LinkClosed(TransportError):
    """The live channel ended without an error."""
