"""The session: one background task that keeps the account in sync.

Each connection attempt is a *session*:

1. CONNECTING: open the live channel (token in the first frame) and learn its ``head``;
   if the WebSocket is refused at the handshake, fall back to REST polling.
2. SYNCING: push the outbox in batches (FIFO per conversation), then pull pages from the
   persisted cursor until caught up, each page applied with its cursor in one transaction.
   Live events that arrive meanwhile are applied too (merging is idempotent).
3. LIVE: apply live events in small batches as they arrive; push whenever the outbox has
   due work (including work queued by another process, e.g. the CLI); pull at once on a seq
   gap; pull on a safety-net timer (or the poll interval when polling).

A transient failure ends the session; stamina's retry loop waits a capped full-jitter
backoff (our :class:`~syncengine.core.policy.RetryPolicy`, honouring Retry-After) and starts
the next one. A refused token stops the loop in FAILED until the user logs in again.
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
from syncengine.client.exchange import Exchange, known_seqs
from syncengine.core.cursor import V1
from syncengine.core.policy import RetryPolicy
from syncengine.core.requests import CatchUp, ConnectLive, PresenceSnapshot
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
from syncengine.models import ConnectionState
from syncengine.store import Store
from syncengine.transport.base import LiveLink, LiveUnavailable, Transport, make_ssl_context

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
        self.mode = "offline"
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

    def set_state(self, new: ConnectionState, reason: str = "") -> None:
        """Move the connection state, record it (syncing engines only) and emit the change."""
        change = self.core.transition(new, reason)  # IllegalTransition: a bug here
        if change is None:
            return
        log.info("connection %s -> %s (%s)", change.old.value, change.new.value, change.reason)
        if self.store is not None and self.config.connect:
            with contextlib.suppress(StoreError):
                self.store.set_state(new)
        self.bus.emit(change)

    def _on_backoff(self, exc: BaseException, delay: float) -> None:
        self.last_error = str(exc)
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
        link: LiveLink | None = None
        if self.config.use_live:
            try:
                link = await transport.connect_live()
            except LiveUnavailable as exc:
                log.warning("live channel unavailable, polling over REST: %s", exc)
        tasks: list[asyncio.Task[Any]] = []
        queue = _LiveBuffer()
        try:
            if link is not None:
                self._attach_link(link, queue, tasks)
            else:
                self.mode = "polling"
            self.set_state(ConnectionState.SYNCING)
            await matrix_glue.push_and_catch_up(self, tasks)
            if link is not None and self.presence_status:
                await link.send_presence(self.presence_status)
            await self._refresh_presence(transport)
            self.set_state(ConnectionState.LIVE, self.mode)
            self.policy.reset()
            self.core.reached_live(asyncio.get_running_loop().time())
            await self._live_loop(transport, queue, tasks)
        except (StoreFull, StoreLocked) as exc:
            # The store refused a write: nothing was committed (cursor unchanged). Treat as
            # transient: back off and try again; the daemon keeps running.
            raise _StoreBusy(str(exc)) from exc
        finally:
            await self._end_session(tasks)

    async def _end_session(self, tasks: list[asyncio.Task[Any]]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.link is not None:
            await self.link.close()
        self.link = None
        self.mode = "offline"
        self.core.connection_lost()
        self.throttle.reset()
        if self.store is not None:
            with contextlib.suppress(StoreError):
                # A typing stop lost with the link must not leave others shown typing forever.
                self.store.clear_typing()
                self.store.recover_sending()

    async def _refresh_presence(self, transport: Transport) -> None:
        """Apply the server's presence snapshot (live changes only cover what happens next)."""
        store = self.require_store()
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

    def _attach_link(
        self, link: LiveLink, queue: _LiveBuffer, tasks: list[asyncio.Task[Any]]
    ) -> None:
        self.link = link
        self.mode = "live"
        self.core.receive_ready(link.head)
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(self._read_live(link, queue), name="syncengine-reader"))
        tasks.append(loop.create_task(self._apply_live(queue), name="syncengine-applier"))

    async def _live_loop(
        self,
        transport: Transport,
        queue: _LiveBuffer,
        tasks: list[asyncio.Task[Any]],
    ) -> None:
        """LIVE: push due work, and perform what the protocol says is due, until the link or
        the server fails."""
        loop = asyncio.get_running_loop()
        core = self.core
        while True:
            now = loop.time()
            await self._wait(tasks, core.next_wakeup(now) - now)
            if self.require_store().due_count(time.time()):
                await self.exchange.push_all()
            for request in core.tick(loop.time(), want_live=self.config.use_live):
                if isinstance(request, CatchUp):
                    await self._timed_catch_up()
                elif isinstance(request, PresenceSnapshot):
                    await self._refresh_presence(transport)
                elif isinstance(request, ConnectLive):
                    await self._reconnect_live(transport, queue, tasks)
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

    async def _reconnect_live(
        self, transport: Transport, queue: _LiveBuffer, tasks: list[asyncio.Task[Any]]
    ) -> None:
        try:
            link = await transport.connect_live()
        except (LiveUnavailable, TransportError) as exc:
            log.info("live channel still unavailable: %s", exc)
            return
        self._attach_link(link, queue, tasks)
        self.core.live_attached()
        if not self.core.link_owns_cursor:  # else the link streams from the cursor itself
            await self.exchange.catch_up()  # cover events between the last poll and head
        self.set_state(ConnectionState.SYNCING, "live channel back")
        self.set_state(ConnectionState.LIVE, "live")

    async def _wait(self, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
        """Sleep until woken, a live task ends (its error is raised) or ``timeout``."""
        waiter = asyncio.get_running_loop().create_task(self._wake.wait())
        await asyncio.wait([waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        self._wake.clear()
        for task in tasks:
            if task.done():
                exc = task.exception()
                raise exc if exc is not None else _LinkClosed("live channel ended")

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
                batch = self._apply_ephemeral(batch)
            self.exchange.emit_new(batch)
            if gap:
                self.kick()

    def _apply_ephemeral(self, batch: list[ServerEvent]) -> list[ServerEvent]:
        """Record the typing and presence events of a batch; returns the batch less the
        events that were refused (a presence with an unknown status)."""
        ephemeral = [ev for ev in batch if not isinstance(ev, DurableEvent)]
        kept = self.require_store().apply_ephemeral(ephemeral)
        if len(kept) == len(ephemeral):
            return batch
        refused = {id(ev) for ev in ephemeral} - {id(ev) for ev in kept}
        for ev in ephemeral:
            if id(ev) in refused and isinstance(ev, UserPresenceChanged):
                log.info("ignored presence with unknown status %r", ev.status)
        return [ev for ev in batch if id(ev) not in refused]

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
