"""The async driver: store <-> core <-> transports, and the public :class:`SyncEngine`.

One background task keeps the account in sync. Each connection attempt is a *session*:

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
the next one. A refused token stops the loop in FAILED until :meth:`SyncEngine.login`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import stamina

from syncengine.core.policy import RetryPolicy
from syncengine.core.sync import SyncCore
from syncengine.core.typing import TypingThrottle
from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    NotFound,
    RateLimited,
    Rejected,
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
from syncengine.events import (
    ConnectionStateChanged,
    ConversationUpdated,
    Discontinuity,
    DurableEvent,
    Event,
    MessageFailed,
    MessageQueued,
    MessageSent,
    ServerEvent,
    SyncCompleted,
    UserPresenceChanged,
)
from syncengine.logs import install_redaction
from syncengine.models import (
    ConnectionState,
    Conversation,
    HistoryPage,
    Message,
    OpKind,
    OutboxItem,
    Presence,
    PresenceStatus,
    SyncHealth,
    Typing,
    new_id,
)
from syncengine.paths import default_db_path, token_path
from syncengine.store import Store
from syncengine.transport.base import LiveLink, LiveUnavailable, Transport, make_ssl_context
from syncengine.wire import EventPage

__all__ = ["SyncEngine"]

log = logging.getLogger("syncengine.engine")

E = TypeVar("E")

_SEEN_POS_MAX = 50_000
_LIVE_BATCH = 500
# Batches of at least this many events are committed on a worker thread: sqlite3 releases the
# GIL while SQLite works and a commit mostly waits for the disk, so receiving and decoding go
# on meanwhile. Smaller ones are committed on the loop (a thread hop costs ~50 µs).
_THREAD_APPLY_MIN = 64


class SyncEngine:
    """An offline-first sync engine for one account, backed by one SQLite file.

    Use it as an async context manager::

        async with SyncEngine("alice.db") as engine:
            await engine.login("http://127.0.0.1:8765", "alice", "secret")
            conv = await engine.create_conversation("Lunch", members=["bob"])
            await engine.send(conv.id, "Noon?")

    Reads (:meth:`messages`, :meth:`conversations`, ...) always answer from the local store.
    Writes are committed to the outbox before they return (G1) and pushed when the server can
    be reached.

    Args:
        db_path: the store file (default: in the platform's user data folder).
        server: server URL override (default: the one recorded at login).
        ca_file: a CA bundle to verify the server with (TLS verification is always on).
        allow_insecure: permit plain http/ws to a non-loopback host.
        connect: keep a background connection (False: only explicit :meth:`sync_once`).
        live: use the WebSocket live channel (False: REST polling only).
        device: this device's name (default: ``<hostname>-<random>`` on first login).
        push_batch: operations per push request.
        page_size: events per pull request.
        poll_interval_s: how often to pull when the live channel is unavailable.
        safety_pull_s: how often to pull while live, as a safety net.
        heartbeat_interval_s, heartbeat_timeout_s: WebSocket ping cadence and deadline.
        backoff_base_s, backoff_cap_s: reconnect backoff (full jitter, capped).
        live_url: override of the WebSocket URL.
        transport_factory: build the transport for a server URL (tests, other protocols).
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        server: str | None = None,
        ca_file: str | None = None,
        allow_insecure: bool = False,
        connect: bool = True,
        live: bool = True,
        device: str | None = None,
        push_batch: int = 500,
        page_size: int = 500,
        poll_interval_s: float = 5.0,
        safety_pull_s: float = 30.0,
        heartbeat_interval_s: float = 2.0,
        heartbeat_timeout_s: float = 3.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        live_url: str | None = None,
        request_timeout_s: float = 10.0,
        transport_factory: Callable[[str], Transport] | None = None,
    ) -> None:
        self.db_path = Path(db_path) if db_path is not None else default_db_path()
        self._server_override = server
        self._ca_file = ca_file
        self._allow_insecure = allow_insecure
        self._connect = connect
        self._use_live = live
        self._device = device
        self._push_batch = push_batch
        self._page_size = page_size
        self._poll_interval_s = poll_interval_s
        self._safety_pull_s = safety_pull_s
        self._heartbeat = (heartbeat_interval_s, heartbeat_timeout_s)
        self._live_url = live_url
        self._request_timeout_s = request_timeout_s
        self._transport_factory = transport_factory
        self._policy = RetryPolicy(
            base=backoff_base_s, cap=backoff_cap_s, on_backoff=self._on_backoff
        )
        # Retries of single requests while the session stays up (a failed push or pull).
        self._op_policy = RetryPolicy(base=backoff_base_s, cap=backoff_cap_s)

        self._store: Store | None = None
        self._transport: Transport | None = None
        self._core = SyncCore(push_batch=push_batch, page_limit=page_size)
        self._throttle = TypingThrottle()
        self._link: LiveLink | None = None
        self._mode = "offline"
        self._presence_status: str | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._push_lock = asyncio.Lock()
        self._pull_lock = asyncio.Lock()
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._callbacks: list[tuple[type, Callable[[Any], Any]]] = []
        self._seen_pos: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._bad_frames = 0
        self._dropped_events = 0
        self._pull_requested = False
        self._presence_stale = False
        self._last_error: str | None = None
        self._failure: SyncEngineError | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> SyncEngine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store and, when logged in and ``connect`` is on, start syncing.

        Raises:
            StoreCorrupt, SchemaTooNew, StoreLocked: the store cannot be opened.
        """
        if self._store is not None:
            return
        # websockets logs frames at DEBUG (the first one carries the token): make sure no
        # record in this process can carry it (G8, pitfall 12).
        install_redaction()
        self._store = Store(self.db_path)
        store = self._store
        self._core.cursor = store.cursor()
        self._core.known_seq = {c.id: c.last_seq for c in store.conversations() if c.last_seq}
        if self._connect:
            # Only a syncing engine records the state that `syncengine status` shows; a
            # one-shot engine (the CLI) must not overwrite the daemon's.
            store.set_state(ConnectionState.OFFLINE)
            # Rows a crashed predecessor (kill -9) left SENDING are this process's now (one
            # writer per store: G6): replay them at once, deduplicated by the server (G2),
            # instead of leaving them - and their conversation's FIFO - stuck until the lease
            # runs out.
            store.recover_sending()
        token = self._load_token()
        server = self._server_override or store.get_meta("server")
        if token and server:
            self._make_transport(server).set_token(token)
            if self._connect:
                self._start_runner()

    async def close(self) -> None:
        """Stop syncing and close the store. Nothing is left SENDING: an interrupted push is
        returned to PENDING and replayed (deduplicated by the server) on the next start."""
        if self._closed:
            return
        self._closed = True
        await self._stop_runner()
        for task in list(self._tasks):
            task.cancel()
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
        if self._store is not None:
            with contextlib.suppress(StoreError):
                if self._connect:
                    # Only the syncing process owns SENDING rows (one writer per store: G6).
                    self._store.recover_sending()
                self._set_state(ConnectionState.OFFLINE, "closed")
            self._store.close()
            self._store = None

    @property
    def store(self) -> Store:
        """The local store (open)."""
        if self._store is None:
            raise UsageError("the engine is not open: use 'async with SyncEngine(...)'")
        return self._store

    @property
    def user(self) -> str | None:
        """The logged-in user name, if any."""
        return self.store.user or None

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._core.state

    @property
    def failure(self) -> SyncEngineError | None:
        """The typed error that stopped the sync loop while the state is FAILED, else None.

        ``AuthFailed`` (log in again), ``TLSVerificationFailed``, ``StoreCorrupt`` or
        ``SyncStopped`` (an unclassified error, chained as its cause). Supervisors such as the
        daemon choose what to do from its type, never from the transition's reason text.
        """
        return self._failure if self._core.state is ConnectionState.FAILED else None

    @property
    def mode(self) -> str:
        """``"live"`` (WebSocket), ``"polling"`` (REST fallback) or ``"offline"``."""
        return self._mode

    # --- account ----------------------------------------------------------------------------

    async def login(
        self, server: str, user: str, password: str, *, device: str | None = None
    ) -> None:
        """Log in, store the token (0600, never logged), and start syncing.

        Raises:
            AuthFailed: wrong credentials.
            UsageError: a bad server URL (plain http to a remote host, ...), or this store
                belongs to another account.
            ServerUnavailable, TLSVerificationFailed: the server could not be reached safely.
        """
        if not user or not password:
            raise UsageError("user and password must not be empty")
        store = self.store
        old_user = store.get_meta("user")
        old_server = store.get_meta("server")
        if old_user and (old_user != user or (old_server and old_server != server)):
            raise UsageError(
                f"{self.db_path} belongs to {old_user} on {old_server}; use another store "
                f"for {user} on {server}"
            )
        device = device or self._device or store.get_meta("device") or _default_device()
        await self._stop_runner()
        transport = self._make_transport(server)
        token = await transport.login(user, password, device)
        store.set_account(server=server.rstrip("/"), user=user, device=device)
        self._save_token(token)
        transport.set_token(token)
        if self.state is ConnectionState.FAILED:
            self._set_state(ConnectionState.OFFLINE, "logged in")
        if self._connect:
            self._start_runner()

    async def logout(self) -> None:
        """Forget the token and stop syncing. Local data and the outbox are kept."""
        await self._stop_runner()
        path = token_path(self.db_path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if self._transport is not None:
            self._transport.set_token(None)
        self._set_state(ConnectionState.OFFLINE, "logged out")

    def _load_token(self) -> str | None:
        path = token_path(self.db_path)
        try:
            data = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        token = data.get("token") if isinstance(data, dict) else None
        return token if isinstance(token, str) else None

    def _save_token(self, token: str) -> None:
        path = token_path(self.db_path)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, orjson.dumps({"token": token}))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _make_transport(self, server: str) -> Transport:
        if self._transport is not None:
            old = self._transport
            self._transport = None
            self._spawn(old.aclose())
        if self._transport_factory is not None:
            transport = self._transport_factory(server)
        else:
            from syncengine.transport.rest import RestTransport

            ctx = make_ssl_context(self._ca_file) if server.startswith("https") else None
            transport = RestTransport(
                server,
                ssl_context=ctx,
                allow_insecure=self._allow_insecure,
                timeout_s=self._request_timeout_s,
                live_url=self._live_url,
                heartbeat_interval_s=self._heartbeat[0],
                heartbeat_timeout_s=self._heartbeat[1],
            )
        self._transport = transport
        return transport

    def _require_transport(self) -> Transport:
        if self._transport is None or self._load_token() is None:
            raise AuthFailed("not logged in: call login() first")
        return self._transport

    # --- writes (all queued, durable on return: G1) -----------------------------------------

    async def send(self, conversation_id: str, body: str, *, op_id: str | None = None) -> Message:
        """Queue a message. Returns its local echo (PENDING) once durably queued.

        Sending again with the same ``op_id`` returns the existing message and queues nothing.

        Raises:
            UsageError: empty or too long body. NotFound: unknown conversation.
            StoreError: the store could not commit; nothing was queued.
        """
        item, created = self.store.enqueue(
            OpKind.SEND, conversation_id, {"body": body}, op_id=op_id
        )
        message = self.store.message_by_op(item.op_id)
        if message is None:  # the op exists but is not a send
            raise UsageError(f"op id {item.op_id} is already used by a {item.kind.value}")
        if created:
            self._emit(MessageQueued(message=message))
            self._kick()
        return message

    async def edit(
        self,
        conversation_id: str,
        body: str,
        *,
        message_id: str | None = None,
        target_op_id: str | None = None,
        op_id: str | None = None,
    ) -> OutboxItem:
        """Queue an edit of a message (named by server id, or by the op id that sent it)."""
        return self._queue(
            OpKind.EDIT,
            conversation_id,
            {"body": body, "message_id": message_id, "target_op_id": target_op_id},
            op_id,
        )

    async def delete(
        self,
        conversation_id: str,
        *,
        message_id: str | None = None,
        target_op_id: str | None = None,
        op_id: str | None = None,
    ) -> OutboxItem:
        """Queue the deletion of a message (named by server id, or by its send's op id)."""
        return self._queue(
            OpKind.DELETE,
            conversation_id,
            {"message_id": message_id, "target_op_id": target_op_id},
            op_id,
        )

    async def mark_read(
        self, conversation_id: str, seq: int | None = None, *, op_id: str | None = None
    ) -> OutboxItem:
        """Queue a read receipt up to ``seq`` (default: the last seq stored)."""
        if seq is None:
            seq = self.store.conversation(conversation_id).last_seq
        return self._queue(OpKind.MARK_READ, conversation_id, {"seq": seq}, op_id)

    async def create_conversation(
        self,
        title: str,
        members: Sequence[str] = (),
        *,
        conversation_id: str | None = None,
        op_id: str | None = None,
    ) -> Conversation:
        """Queue the creation of a conversation (usable offline at once: send into it)."""
        cid = conversation_id or new_id()
        self._queue(
            OpKind.CREATE_CONVERSATION, cid, {"title": title, "members": list(members)}, op_id
        )
        return self.store.conversation(cid)

    def _queue(
        self, kind: OpKind, cid: str, payload: dict[str, Any], op_id: str | None
    ) -> OutboxItem:
        payload = {k: v for k, v in payload.items() if v is not None}
        item, created = self.store.enqueue(kind, cid, payload, op_id=op_id)
        if created:
            self._kick()
        return item

    async def retry(self, op_ids: Sequence[str] | None = None) -> list[str]:
        """Requeue FAILED operations (all when ``op_ids`` is None)."""
        ids = self.store.requeue(op_ids)
        if ids:
            self._kick()
        return ids

    # --- reads (always from the store) ------------------------------------------------------

    async def conversations(self) -> list[Conversation]:
        """Conversations this user is a member of, with unread counts."""
        return self.store.conversations()

    async def messages(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """A page of messages, oldest first, from the store.

        When the local page is short and the engine is connected, older messages are fetched
        from the server first (back-pagination) and stored; ``from_store`` is then False.
        ``has_more`` says whether older messages exist; ``end_of_history`` that the server
        said nothing older exists.
        """
        store = self.store
        local, lowest, complete = store.page(conversation_id, before=before, limit=limit)
        server_msgs = [m for m in local if m.seq is not None]
        from_store = True
        if (
            len(server_msgs) < limit
            and not complete
            and self.state in (ConnectionState.LIVE, ConnectionState.SYNCING)
            and self._transport is not None
        ):
            anchor = server_msgs[0].seq if server_msgs else before
            if anchor is None:
                anchor = store.lowest_seq(conversation_id)
            try:
                page = await self._transport.history(
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

    async def presence(self, user: str) -> Presence | None:
        """A user's last known presence (None if never seen)."""
        return self.store.presence(user)

    async def typing(self, conversation_id: str) -> list[Typing]:
        """Who is typing in a conversation now (expired indicators hidden)."""
        return self.store.typing(conversation_id)

    async def health(self) -> SyncHealth:
        """The sync-health summary, derived from the store."""
        return self.store.health(open_gaps=len(self._core.gaps))

    # --- ephemeral --------------------------------------------------------------------------

    async def set_typing(self, conversation_id: str, typing: bool = True) -> None:
        """Say the user is (or stopped) typing. Throttled: a refresh about every 3 s while
        typing continues, a stop after 5 s idle. Dropped silently while offline."""
        if not self.store.has_conversation(conversation_id):
            raise NotFound(f"no conversation {conversation_id} in the store")
        frame = self._throttle.update(conversation_id, typing, time.monotonic())
        if frame is not None:
            await self._send_typing(conversation_id, frame)

    async def _send_typing(self, conversation_id: str, frame: bool) -> None:
        await self._send_live(lambda link: link.send_typing(conversation_id, frame))

    async def set_presence(self, status: PresenceStatus | str) -> None:
        """Set this user's presence (``online`` or ``away``); re-sent after reconnects."""
        status = PresenceStatus(status)
        if status is PresenceStatus.OFFLINE:
            raise UsageError("presence 'offline' is set by the server when you disconnect")
        self._presence_status = status.value
        await self._send_live(lambda link: link.send_presence(status.value))

    async def _send_live(self, make: Callable[[LiveLink], Any]) -> None:
        link = self._link
        if link is None:
            return
        try:
            await make(link)
        except (TransportError, AuthFailed) as exc:
            log.info("live send failed: %s", exc)

    # --- events -----------------------------------------------------------------------------

    def events(self, *, maxsize: int = 10_000) -> AsyncIterator[Event]:
        """An async iterator of every event from now on (server and engine events).

        Each call is a new subscription. A subscriber that falls ``maxsize`` events behind
        loses the oldest ones (counted); the store is the source of truth.
        """
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)

        async def stream() -> AsyncIterator[Event]:
            try:
                while True:
                    yield await queue.get()
            finally:
                self._subscribers.discard(queue)

        return stream()

    def on(self, event_type: type[E], callback: Callable[[E], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``event_type`` (or a subclass).

        The callback may be a plain function or a coroutine function; its exceptions are
        logged, never raised into the engine. Returns a function that unsubscribes.
        """
        entry = (event_type, callback)
        self._callbacks.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(entry)

        return unsubscribe

    async def states(self) -> AsyncIterator[ConnectionState]:
        """The connectivity stream: the current state, then every change."""
        stream = self.events()
        yield self.state
        async for ev in stream:
            if isinstance(ev, ConnectionStateChanged):
                yield ev.new

    def _emit(self, event: Event) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                self._dropped_events += 1
            queue.put_nowait(event)
        for event_type, callback in list(self._callbacks):
            if isinstance(event, event_type):
                try:
                    result = callback(event)
                    if inspect.isawaitable(result):
                        self._spawn(_guard(result))
                except Exception:
                    log.exception("event callback %r failed", callback)

    def _emit_new(self, events: Sequence[ServerEvent]) -> None:
        """Forward applied server events, each durable one once (by pos)."""
        if not self._subscribers and not self._callbacks:
            # Nobody listens (a daemon, a bulk catch-up): only the presence hint matters.
            if not self._presence_stale:
                self._presence_stale = any(isinstance(ev, ConversationUpdated) for ev in events)
            return
        seen = self._seen_pos
        for ev in events:
            if isinstance(ev, DurableEvent):
                if ev.pos in seen:
                    continue
                if isinstance(ev, ConversationUpdated):
                    # New contacts: their current presence is only in the snapshot.
                    self._presence_stale = True
                seen[ev.pos] = None
                if len(seen) > _SEEN_POS_MAX:
                    seen.popitem(last=False)
            self._emit(ev)

    # --- sync -------------------------------------------------------------------------------

    async def sync_once(self) -> SyncCompleted:
        """Push pending operations, then pull until caught up. Returns what it did.

        Raises:
            AuthFailed: not logged in or token refused.
            ServerUnavailable, RateLimited: the server could not be reached; queued work
                stays queued.
        """
        transport = self._require_transport()
        del transport
        pushed = await self._push_all()
        pulled = await self._catch_up()
        done = SyncCompleted(pushed=pushed, pulled=pulled, cursor=self._core.cursor)
        self._emit(done)
        return done

    async def wait_for_pending(self, timeout: float | None = None) -> bool:
        """Wait until the outbox has nothing pending or sending. False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    h = self.store.health()
                    if h.pending == 0 and h.sending == 0:
                        return True
                    self._kick()
                    await asyncio.sleep(0.02)
        except TimeoutError:
            return False

    async def wait_for_state(self, state: ConnectionState, timeout: float | None = None) -> bool:
        """Wait until the connection reaches ``state``. False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self.state is not state:
                    await asyncio.sleep(0.01)
            return True
        except TimeoutError:
            return False

    def _kick(self) -> None:
        self._wake.set()

    def _set_state(self, new: ConnectionState, reason: str = "") -> None:
        try:
            change = self._core.transition(new, reason)
        except UsageError:
            # An edge outside the table (e.g. BACKOFF reported while already OFFLINE on
            # close): the table is the truth, so the move is refused, not forced.
            log.debug("ignored connection transition to %s", new.value)
            return
        if change is None:
            return
        log.info("connection %s -> %s (%s)", change.old.value, change.new.value, change.reason)
        if self._store is not None and self._connect:
            with contextlib.suppress(StoreError):
                self._store.set_state(new)
        self._emit(change)

    def _on_backoff(self, exc: BaseException, delay: float) -> None:
        self._last_error = str(exc)
        self._set_state(ConnectionState.BACKOFF, f"{exc} (retry in {delay:.1f}s)")

    def _start_runner(self) -> None:
        if self._runner is None or self._runner.done():
            self._closed = False
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="syncengine-runner"
            )

    async def _stop_runner(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._store is not None and self.state is not ConnectionState.FAILED:
            self._set_state(ConnectionState.OFFLINE, "stopped")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            async for attempt in stamina.retry_context(
                on=self._policy, attempts=None, timeout=None
            ):
                with attempt:
                    await self._session()
        except AuthFailed as exc:
            self._last_error = str(exc)
            self._failure = exc
            self._set_state(ConnectionState.FAILED, "credentials refused: log in again")
        except TLSVerificationFailed as exc:
            self._last_error = str(exc)
            self._failure = exc
            self._set_state(ConnectionState.FAILED, str(exc))
        except StoreCorrupt as exc:
            self._failure = exc
            self._set_state(ConnectionState.FAILED, "store corrupt")
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unclassified failure: report, do not spin
            log.exception("sync loop stopped")
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._failure = SyncStopped(self._last_error)
            self._failure.__cause__ = exc
            self._set_state(ConnectionState.FAILED, self._last_error)

    async def _session(self) -> None:
        transport = self._require_transport()
        self._set_state(ConnectionState.CONNECTING)
        self._core.connection_lost()
        # The persisted cursor is the truth: the in-memory one follows live events before
        # their batch commits, so after a failed commit (disk full, store locked) it is ahead
        # of the store, and pulling from it would skip those events for good (G3, pitfall 2).
        store = self.store
        self._core.cursor = store.cursor()
        self._core.known_seq = {c.id: c.last_seq for c in store.conversations() if c.last_seq}
        link: LiveLink | None = None
        if self._use_live:
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
                self._mode = "polling"
            self._set_state(ConnectionState.SYNCING)
            await self._push_all()
            await self._catch_up()
            if link is not None and self._presence_status:
                await link.send_presence(self._presence_status)
            await self._refresh_presence(transport)
            self._set_state(ConnectionState.LIVE, self._mode)
            self._policy.reset()
            await self._live_loop(transport, queue, tasks)
        except (StoreFull, StoreLocked) as exc:
            # The store refused a write: nothing was committed (cursor unchanged). Treat as
            # transient: back off and try again; the daemon keeps running.
            raise _StoreBusy(str(exc)) from exc
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._link is not None:
                await self._link.close()
            self._link = None
            self._mode = "offline"
            self._core.connection_lost()
            self._throttle.reset()
            if self._store is not None:
                with contextlib.suppress(StoreError):
                    self._store.clear_typing()  # a lost stop must not stick (pitfall 7)
                    self._store.recover_sending()

    async def _refresh_presence(self, transport: Transport) -> None:
        """Apply the server's presence snapshot (live changes only cover what happens next)."""
        store = self.store
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
        self._link = link
        self._mode = "live"
        self._core.receive_ready(link.head)
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(self._read_live(link, queue), name="syncengine-reader"))
        tasks.append(loop.create_task(self._apply_live(queue), name="syncengine-applier"))

    async def _live_loop(
        self,
        transport: Transport,
        queue: _LiveBuffer,
        tasks: list[asyncio.Task[Any]],
    ) -> None:
        loop = asyncio.get_running_loop()
        interval = self._safety_pull_s if self._link is not None else self._poll_interval_s
        next_pull = loop.time() + interval
        next_live_try = loop.time() + max(self._poll_interval_s * 6, 30.0)
        pull_blocked_until = 0.0
        while True:
            timeout = min(0.25, max(0.0, next_pull - loop.time()))
            waiter = loop.create_task(self._wake.wait())
            await asyncio.wait(
                [waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            self._wake.clear()
            for task in tasks:
                if task.done():
                    exc = task.exception()
                    raise exc if exc is not None else _LinkClosed("live channel ended")
            store = self.store
            if store.due_count(time.time()):
                await self._push_all()
            urgent = self._core.gaps or self._pull_requested
            if (urgent and loop.time() >= pull_blocked_until) or loop.time() >= next_pull:
                self._pull_requested = False
                try:
                    await self._catch_up()
                    next_pull = loop.time() + interval
                except TransportError as exc:
                    if self._link is None:
                        raise  # polling: REST is the only channel, so the session is down
                    # The live link is up: retry the pull on a timer instead of tearing it down.
                    next_pull = pull_blocked_until = loop.time() + self._op_policy.delay(exc)
                    log.info("pull failed while live, retrying: %s", exc)
            if self._presence_stale:
                self._presence_stale = False
                await self._refresh_presence(transport)
            for cid, frame in self._throttle.tick(time.monotonic()):
                await self._send_typing(cid, frame)
            if self._link is None and self._use_live and loop.time() >= next_live_try:
                next_live_try = loop.time() + max(self._poll_interval_s * 6, 30.0)
                try:
                    link = await transport.connect_live()
                except (LiveUnavailable, TransportError) as exc:
                    log.info("live channel still unavailable: %s", exc)
                else:
                    self._attach_link(link, queue, tasks)
                    interval = self._safety_pull_s
                    await self._catch_up()  # cover events between the last poll and head
                    self._set_state(ConnectionState.SYNCING, "live channel back")
                    self._set_state(ConnectionState.LIVE, "live")

    async def _read_live(self, link: LiveLink, queue: _LiveBuffer) -> None:
        store = self.store
        while True:
            try:
                event = await link.recv()
            except WireError as exc:
                # A malformed frame: keep it for inspection and go on; a pull covers any
                # durable event it may have carried.
                self._bad_frames += 1
                store.quarantine("<live frame>", str(exc))
                self._pull_requested = True
                self._kick()
                continue
            if event is not None:
                queue.put(event)

    async def _apply_live(self, queue: _LiveBuffer) -> None:
        """Apply what the reader queued, in arrival order, a batch at a time: the durable
        events in one transaction with the cursor, typing and presence in one more (one
        commit per event would cap a busy channel at the disk's commit rate)."""
        while True:
            batch = await queue.take(_LIVE_BATCH)
            durable = [ev for ev in batch if isinstance(ev, DurableEvent)]
            cursor: int | None = None
            gap = False
            for ev in durable:
                decision = self._core.receive_live(ev)
                if decision.cursor is not None:
                    cursor = decision.cursor
                gap = gap or decision.gap
            if durable:
                await self._apply_events(durable, cursor=cursor)
                if cursor is not None:
                    self._core.committed(cursor)  # only now may pulls start from it (G3)
            if len(durable) < len(batch):
                batch = self._apply_ephemeral(batch)
            self._emit_new(batch)
            if gap:
                self._kick()

    def _apply_ephemeral(self, batch: list[ServerEvent]) -> list[ServerEvent]:
        """Record the typing and presence events of a batch; returns the batch less the
        events that were refused (a presence with an unknown status)."""
        ephemeral = [ev for ev in batch if not isinstance(ev, DurableEvent)]
        kept = self.store.apply_ephemeral(ephemeral)
        if len(kept) == len(ephemeral):
            return batch
        refused = {id(ev) for ev in ephemeral} - {id(ev) for ev in kept}
        for ev in ephemeral:
            if id(ev) in refused and isinstance(ev, UserPresenceChanged):
                log.info("ignored presence with unknown status %r", ev.status)
        return [ev for ev in batch if id(ev) not in refused]

    async def _apply_events(
        self, events: Sequence[ServerEvent], *, cursor: int | None, synced: bool = False
    ) -> None:
        """:meth:`_apply_safely`, on a worker thread when the batch is large."""
        if len(events) >= _THREAD_APPLY_MIN:
            await asyncio.to_thread(self._apply_safely, events, cursor=cursor, synced=synced)
        else:
            self._apply_safely(events, cursor=cursor, synced=synced)

    def _apply_safely(
        self, events: Sequence[ServerEvent], *, cursor: int | None, synced: bool = False
    ) -> None:
        """Apply events; a poison event (one the store refuses) is isolated by bisection,
        quarantined, and passed over so the cursor moves on."""
        store = self.store
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
            self._apply_safely(events[:mid], cursor=None)
            self._apply_safely(events[mid:], cursor=cursor, synced=synced)

    async def _push_all(self) -> int:
        """Push everything due. Returns how many operations the server acknowledged."""
        transport = self._require_transport()
        total = 0
        async with self._push_lock:
            while True:
                items = self.store.claim(self._push_batch, now=time.time())
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
        store = self.store
        ids = [i.op_id for i in items]
        try:
            results = await transport.push(self._core.push_request(items)["ops"])
        except RateLimited as exc:
            wait = exc.retry_after if exc.retry_after is not None else self._policy.delay(exc)
            store.mark_retry(ids, str(exc), time.time() + wait)
            return 0, True
        except Rejected as exc:
            # The request as a whole was refused (e.g. one malformed op): isolate the culprit
            # by bisection so the rest keep flowing (pitfall 3).
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
            # does not tear it down: the items are retried on a timer (pitfall 3), and a
            # live echo may confirm them first.
            if self.state is ConnectionState.LIVE and self._link is not None:
                delay = self._op_policy.delay(exc)
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
        self._op_policy.reset()
        outcome = self._core.receive_push_results(items, results)
        by_id = {i.op_id: i for i in items}
        # One transaction for the whole batch of acknowledgements (not one commit each).
        moved = store.mark_sent_many(outcome.sent)
        for res, changed in zip(outcome.sent, moved, strict=True):
            if changed and by_id[res.op_id].kind is OpKind.SEND:
                self._emit(
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
            delay = self._policy.delay(TransportError("operation deferred by the server"))
            store.mark_retry(outcome.retry, "deferred by the server", time.time() + delay)
        return len(outcome.sent), False

    def _fail(self, item: OutboxItem, code: str, reason: str) -> None:
        if self.store.mark_failed(item.op_id, code, reason):
            log.warning("operation %s (%s) rejected: %s: %s", item.op_id, item.kind, code, reason)
            self._emit(
                MessageFailed(
                    op_id=item.op_id, conversation_id=item.conversation_id, code=code, reason=reason
                )
            )

    async def _catch_up(self) -> int:
        """Pull pages from the cursor until caught up. Returns the number of events pulled.

        The next page is requested before the current one is applied, so the server's work,
        the transfer and the decoding overlap the commit (SQLite is the binding stage). Pages
        are still applied one at a time, in order, each with its cursor (G3).
        """
        transport = self._require_transport()
        loop = asyncio.get_running_loop()
        pulled = 0
        async with self._pull_lock:
            ahead: asyncio.Task[EventPage] | None = None
            while True:
                try:
                    if ahead is not None:
                        page = await ahead
                    else:
                        page = await transport.pull(self._core.cursor, self._page_size)
                except CursorExpired:
                    ahead = None
                    await self._resync(transport)
                    continue
                ahead = None
                if page.has_more:
                    since = max(page.next, self._core.cursor)
                    ahead = loop.create_task(transport.pull(since, self._page_size))
                try:
                    await self._apply_page(page)
                except BaseException:
                    if ahead is not None:
                        ahead.cancel()
                        with contextlib.suppress(BaseException):
                            await ahead
                    raise
                pulled += len(page.events)
                if self._core.receive_page(page):  # no more: nothing was requested ahead
                    return pulled

    async def _apply_page(self, page: EventPage) -> None:
        cursor = max(page.next, self._core.cursor)
        await self._apply_events(page.events, cursor=cursor, synced=not page.has_more)
        for raw, error in page.bad:
            self.store.quarantine(raw, error)
        self._emit_new(page.events)

    async def _resync(self, transport: Transport) -> None:
        """The cursor expired (G5): rebuild from a snapshot, then emit one Discontinuity."""
        store = self.store
        old = self._core.cursor
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
        self._core.resynced(head)
        self._core.known_seq = {c.id: c.last_seq for c in store.conversations() if c.last_seq}
        self._emit(Discontinuity(old_cursor=old, new_cursor=head))


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


async def _guard(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("event callback failed")


def _default_device() -> str:
    import socket

    return f"{socket.gethostname()[:40]}-{new_id()[-8:]}"
