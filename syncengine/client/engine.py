"""The public :class:`SyncEngine`: the API an app calls. The syncing itself is the session's.

Reads answer from the local store; writes are committed to the outbox before they return (G1)
and pushed by :class:`~syncengine.client.session.Session`, which moves data between the sync
core, the transport and the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from syncengine.client.bus import EventBus
from syncengine.client.chat import ChatMixin
from syncengine.client.config import EngineConfig
from syncengine.client.credentials import forget_token, load_token, save_token
from syncengine.client.matrix_glue import (
    account_user,
    choose_protocol,
    push_then_pull,
    same_account,
)
from syncengine.client.session import Session
from syncengine.errors import NotFound, SyncEngineError, UsageError
from syncengine.events import (
    ConnectionStateChanged,
    Event,
    SyncCompleted,
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
from syncengine.paths import default_db_path
from syncengine.store import Store

__all__ = ["SyncEngine"]

log = logging.getLogger("syncengine.engine")

E = TypeVar("E")


class SyncEngine(ChatMixin):
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
        transport_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.db_path = Path(db_path) if db_path is not None else default_db_path()
        self.config = EngineConfig(
            server=server,
            ca_file=ca_file,
            allow_insecure=allow_insecure,
            connect=connect,
            use_live=live,
            device=device,
            push_batch=push_batch,
            page_size=page_size,
            poll_interval_s=poll_interval_s,
            safety_pull_s=safety_pull_s,
            heartbeat_interval_s=heartbeat_interval_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            live_url=live_url,
            request_timeout_s=request_timeout_s,
            transport_factory=transport_factory,
        )
        self._bus = EventBus(spawn=lambda coro: self._session.spawn(coro))
        self._session = Session(self.db_path, self.config, self._bus)
        self._closed = False

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
        session = self._session
        if session.store is not None:
            return
        # websockets logs frames at DEBUG (the first one carries the token): make sure no
        # record in this process can carry it (G8: secrets never reach a log).
        install_redaction()
        store = session.attach_store(Store(self.db_path))
        token = load_token(self.db_path)
        server = self.config.server or store.get_meta("server")
        if token and server:
            session.make_transport(server).set_token(token)
            if self.config.connect:
                self._start_runner()

    async def close(self) -> None:
        """Stop syncing and close the store. Nothing is left SENDING: an interrupted push is
        returned to PENDING and replayed (deduplicated by the server) on the next start."""
        if self._closed:
            return
        self._closed = True
        await self._session.close()

    @property
    def store(self) -> Store:
        """The local store (open)."""
        return self._session.require_store()

    @property
    def user(self) -> str | None:
        """The logged-in user name, if any."""
        return self.store.user or None

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._session.core.state

    @property
    def failure(self) -> SyncEngineError | None:
        """The typed error behind a FAILED state (``AuthFailed``, ``TLSVerificationFailed``,
        ``StoreCorrupt``, or ``SyncStopped`` chained to its cause), else None: supervisors such
        as the daemon act on its type, never on the transition's reason text."""
        return self._session.failure if self.state is ConnectionState.FAILED else None

    @property
    def mode(self) -> str:
        """``"live"`` (WebSocket), ``"polling"`` (REST fallback) or ``"offline"``."""
        return self._session.mode

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
        if not same_account(old_user, user) or (old_user and old_server and old_server != server):
            raise UsageError(
                f"{self.db_path} belongs to {old_user} on {old_server}; use another store "
                f"for {user} on {server}"
            )
        device = device or self.config.device or store.get_meta("device") or _default_device()
        await self._session.stop()
        await choose_protocol(self._session, server)  # meta.protocol: v1 or matrix
        transport = self._session.make_transport(server)
        token = await transport.login(user, password, device)
        store.set_account(
            server=server.rstrip("/"), user=account_user(transport, user), device=device
        )
        save_token(self.db_path, token)
        transport.set_token(token)
        if self.state is ConnectionState.FAILED:
            self._session.set_state(ConnectionState.OFFLINE, "logged in")
        if self.config.connect:
            self._start_runner()

    async def logout(self) -> None:
        """Forget the token and stop syncing. Local data and the outbox are kept."""
        await self._session.stop()
        forget_token(self.db_path)
        if self._session.transport is not None:
            self._session.transport.set_token(None)
        self._session.set_state(ConnectionState.OFFLINE, "logged out")

    def _start_runner(self) -> None:
        self._closed = False
        self._session.start()

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
            self._announce(message)
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
            self._session.kick()
        return item

    async def retry(self, op_ids: Sequence[str] | None = None) -> list[str]:
        """Requeue FAILED operations (all when ``op_ids`` is None)."""
        ids = self.store.requeue(op_ids)
        if ids:
            self._session.kick()
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
        connected = self.state in (ConnectionState.LIVE, ConnectionState.SYNCING)
        return await self._session.exchange.history_page(
            conversation_id, before=before, limit=limit, connected=connected
        )

    async def presence(self, user: str) -> Presence | None:
        """A user's last known presence (None if never seen)."""
        return self.store.presence(user)

    async def typing(self, conversation_id: str) -> list[Typing]:
        """Who is typing in a conversation now (expired indicators hidden)."""
        return self.store.typing(conversation_id)

    async def health(self) -> SyncHealth:
        """The sync-health summary, derived from the store."""
        return self.store.health(open_gaps=len(self._session.core.gaps))

    # --- ephemeral --------------------------------------------------------------------------

    async def set_typing(self, conversation_id: str, typing: bool = True) -> None:
        """Say the user is (or stopped) typing. Throttled: a refresh about every 3 s while
        typing continues, a stop after 5 s idle. Dropped silently while offline."""
        if not self.store.has_conversation(conversation_id):
            raise NotFound(f"no conversation {conversation_id} in the store")
        frame = self._session.throttle.update(conversation_id, typing, time.monotonic())
        if frame is not None:
            await self._session.send_typing(conversation_id, frame)

    async def set_presence(self, status: PresenceStatus | str) -> None:
        """Set this user's presence (``online`` or ``away``); re-sent after reconnects."""
        status = PresenceStatus(status)
        if status is PresenceStatus.OFFLINE:
            raise UsageError("presence 'offline' is set by the server when you disconnect")
        self._session.presence_status = status.value
        await self._session.send_live(lambda link: link.send_presence(status.value))

    # --- events -----------------------------------------------------------------------------

    def events(self, *, maxsize: int = 10_000) -> AsyncIterator[Event]:
        """An async iterator of every event from now on (server and engine events).

        Each call is a new subscription. A subscriber that falls ``maxsize`` events behind
        loses the oldest ones (counted); the store is the source of truth.
        """
        return self._bus.events(maxsize=maxsize)

    def on(self, event_type: type[E], callback: Callable[[E], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``event_type`` (or a subclass).

        The callback may be a plain function or a coroutine function; its exceptions are
        logged, never raised into the engine. Returns a function that unsubscribes.
        """
        return self._bus.on(event_type, callback)

    async def states(self) -> AsyncIterator[ConnectionState]:
        """The connectivity stream: the current state, then every change."""
        stream = self.events()
        yield self.state
        async for ev in stream:
            if isinstance(ev, ConnectionStateChanged):
                yield ev.new

    # --- sync -------------------------------------------------------------------------------

    async def sync_once(self) -> SyncCompleted:
        """Push pending operations, then pull until caught up. Returns what it did.

        Raises:
            AuthFailed: not logged in or token refused.
            ServerUnavailable, RateLimited: the server could not be reached; queued work
                stays queued.
        """
        session = self._session
        session.require_transport()
        pushed, pulled = await push_then_pull(session)  # Matrix: pulls first, then again
        # An int in protocol v1, an opaque token on Matrix.
        cursor = session.core.cursor
        done = SyncCompleted(pushed=pushed, pulled=pulled, cursor=cursor)
        self._bus.emit(done)
        return done

    async def wait_for_pending(self, timeout: float | None = None) -> bool:
        """Wait until the outbox has nothing pending or sending. False on timeout."""

        def drained() -> bool:
            health = self.store.health()
            if health.pending == 0 and health.sending == 0:
                return True
            self._session.kick()
            return False

        return await _poll(drained, 0.02, timeout)

    async def wait_for_state(self, state: ConnectionState, timeout: float | None = None) -> bool:
        """Wait until the connection reaches ``state``. False on timeout."""
        return await _poll(lambda: self.state is state, 0.01, timeout)


async def _poll(done: Callable[[], bool], every_s: float, timeout: float | None) -> bool:
    """Check ``done()`` every ``every_s`` seconds until it holds (True) or ``timeout`` (False)."""
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(every_s)
        return True
    except TimeoutError:
        return False


def _default_device() -> str:
    import socket

    return f"{socket.gethostname()[:40]}-{new_id()[-8:]}"
