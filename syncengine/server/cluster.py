"""Several ``serve`` processes on one PostgreSQL database: the nodes of one server.

The event table is the truth; LISTEN/NOTIFY only wakes. :class:`ClusterHub` is the live
hub of one node. It fans out, to its own connections and strictly in ``pos`` order, every
event of the log, whichever node wrote it:

- a commit on this node publishes its events at once, after first reading from the table
  any events other nodes committed before them (appends are serialised by the database, see
  :mod:`~syncengine.server.storage.postgres`, so every earlier pos is already committed);
- a commit on another node arrives as ``NOTIFY syncengine_log, '<head>'`` (a few bytes: a
  hint, never the event); the listener thread wakes the loop, which reads the events after
  :attr:`ClusterHub.relayed` from the table;
- a notification missed (the listener's connection dropped, the database restarted) loses
  nothing: the node also catches up on a timer (``cluster_catchup_s``) and whenever its
  listener (re)connects.

Typing and presence are ephemeral and have no table: a node that sends one to its own
connections also sends it as ``NOTIFY syncengine_ephemeral`` (the event, a few hundred
bytes, far under PostgreSQL's 8,000-byte payload limit), and every other node delivers it
to its own connections of the audience, which it computes from the shared membership.

Rate limits hold across nodes: :class:`SharedRateLimiter` keeps the REST and login token
buckets in the database (one atomic upsert per request); a live connection's own frame
limit stays with the connection, on its node.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import orjson
import psycopg

from syncengine.protocol import codec
from syncengine.protocol.bodies import PresenceEntry
from syncengine.protocol.events import (
    ServerEvent,
    TypingStarted,
    TypingStopped,
    UserPresenceChanged,
)
from syncengine.server.config import ServerConfig
from syncengine.server.live import CLOSE_OVERFLOW, Hub
from syncengine.server.storage.interface import Committed
from syncengine.server.storage.postgres import LOG_CHANNEL, PostgresStorage

__all__ = ["EPHEMERAL_CHANNEL", "ClusterHub", "SharedRateLimiter", "attach"]

log = logging.getLogger("syncengine.server.cluster")

#: The channel of typing and presence events between nodes.
EPHEMERAL_CHANNEL = "syncengine_ephemeral"

_BATCH = 1000  # events read from the table per catch-up query
_MAX_BATCHES = 1000  # bound of one catch-up (a million events); the timer resumes after


@attrs.define
class SharedRateLimiter:
    """A :class:`~syncengine.server.rules.RateLimiter` whose buckets live in the database,
    so a user's budget is one budget whichever node their requests reach.

    Attributes:
        buckets: always empty (kept for the service's sweep check); idle rows are deleted
            every ``sweep_every`` takes instead.
    """

    storage: PostgresStorage
    rate: float
    burst: float
    prefix: str
    sweep_every: int = 10_000
    buckets: dict[str, Any] = attrs.field(factory=dict)
    _takes: int = 0

    def take(self, key: str, now: float) -> float:
        """Take one token for ``key``; 0.0 when allowed, else the seconds to wait."""
        self._takes += 1
        if self._takes % self.sweep_every == 0:
            self.storage.forget_idle_buckets(self.burst / self.rate + 60.0)
        return self.storage.take_token(f"{self.prefix}:{key}", self.rate, self.burst)

    def wait(self, key: str, now: float) -> float:
        """The seconds until ``key`` may take a token (0.0: now), taking none."""
        return self.storage.peek_token(f"{self.prefix}:{key}", self.rate, self.burst)

    def forget_idle(self, now: float) -> None:
        """Nothing to forget in memory."""


class ClusterHub(Hub):
    """The live hub of one node of a multi-node server (see the module docstring).

    Attributes:
        node_id: this process's random id (its own ephemeral notifications are skipped).
        relayed: every event up to this pos has been fanned out to this node's connections.
        stats: counters (notifications, catch-ups, events relayed from other nodes,
            listener reconnects).
    """

    def __init__(self, config: ServerConfig, storage: PostgresStorage) -> None:
        super().__init__(config, storage)
        self.pg = storage
        self.node_id = secrets.token_hex(6)
        self.relayed = storage.head
        self.stats = {"notifies": 0, "catchups": 0, "relayed": 0, "reconnects": 0}
        self._remote_presence: dict[str, tuple[str, int | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wake_pending = False

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the listener thread and the catch-up timer (on the running loop)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._listen, name=f"syncengine-listen-{self.node_id}", daemon=True
        )
        self._thread.start()
        self._schedule_tick()

    def shutdown(self) -> None:
        """Stop the listener and the timer, then the hub's own timers."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        super().shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _schedule_tick(self) -> None:
        if self._loop is not None and not self.closed:
            self._timer = self._loop.call_later(self.config.cluster_catchup_s, self._tick)

    def _tick(self) -> None:
        self.catch_up()
        self._schedule_tick()

    # --- durable events ------------------------------------------------------------------

    def publish(self, committed: Iterable[Committed]) -> None:
        """Fan out this node's commit, after any earlier events of other nodes."""
        events = list(committed)
        if not events:
            return
        if events[0].pos - 1 > self.relayed:
            self.catch_up(events[0].pos - 1)
        for event in events:
            if event.pos > self.relayed:
                super().publish((event,))
                self.relayed = event.pos

    def catch_up(self, upto: int | None = None) -> None:
        """Fan out, in pos order, the events after :attr:`relayed` (up to ``upto``, else the
        head) that other nodes committed. Database errors are logged; the timer retries."""
        self._wake_pending = False
        if self.closed or self.pg.closed:
            return
        try:
            head = self.pg.head if upto is None else upto
            if head <= self.relayed:
                return
            self.stats["catchups"] += 1
            oldest = self.pg.oldest_pos
            if self.relayed < oldest - 1:
                # Retention pruned events this node never fanned out: its connections can
                # no longer be told in order; they reconnect and catch up over REST.
                self.close_all(CLOSE_OVERFLOW, "live channel fell behind the log")
                self.relayed = oldest - 1
            for _ in range(_MAX_BATCHES):
                batch = self.pg.committed_since(self.relayed, head, _BATCH)
                if not batch:
                    break
                super().publish(batch)
                self.stats["relayed"] += len(batch)
                self.relayed = batch[-1].pos
                if self.relayed >= head:
                    break
        except psycopg.Error as exc:
            log.warning("cluster catch-up failed (will retry): %s", exc)

    # --- ephemeral events ----------------------------------------------------------------

    def _send(self, event: ServerEvent, users: Iterable[str]) -> None:
        super()._send(event, users)
        if self.closed or self.pg.closed:
            return
        payload = orjson.dumps({"node": self.node_id, "event": codec.encode_event(event)})
        try:
            self.pg.notify(EPHEMERAL_CHANNEL, payload.decode())
        except psycopg.Error as exc:  # ephemeral: a lost typing or presence frame is allowed
            log.warning("cluster: cannot relay %s: %s", event.type, exc)

    def _deliver_remote(self, obj: dict[str, Any]) -> None:
        if self.closed or self.pg.closed:
            return
        try:
            event = codec.decode_event(obj)
            if isinstance(event, TypingStarted | TypingStopped):
                audience = [m for m in self.pg.members(event.conversation_id) if m != event.user]
            elif isinstance(event, UserPresenceChanged):
                self._remote_presence[event.user] = (event.status, event.last_seen_ms)
                audience = self.pg.shared_users(event.user)
            else:
                return
        except Exception as exc:
            log.warning("cluster: dropped a malformed ephemeral notification: %r", exc)
            return
        Hub._send(self, event, audience)

    def presence_of(self, users: list[str]) -> list[PresenceEntry]:
        """As :meth:`Hub.presence_of`, with users connected to other nodes seen as such."""
        out = super().presence_of(users)
        for i, entry in enumerate(out):
            remote = self._remote_presence.get(entry.user)
            if entry.status == "offline" and remote is not None and remote[0] != "offline":
                out[i] = PresenceEntry(
                    user=entry.user, status=remote[0], last_seen_ms=entry.ts_ms, ts_ms=entry.ts_ms
                )
        return out

    # --- the listener thread -------------------------------------------------------------

    def _call(self, func: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(func, *args)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._call(self.catch_up)

    def _listen(self) -> None:
        """LISTEN on both channels; reconnect with a capped backoff; catch up on connect."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.pg.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {LOG_CHANNEL}")
                    conn.execute(f"LISTEN {EPHEMERAL_CHANNEL}")
                    self._wake()  # whatever was committed while nobody listened
                    backoff = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._on_notify(note.channel, note.payload)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                self.stats["reconnects"] += 1
                log.warning("cluster listener lost its connection (%s); reconnecting", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _on_notify(self, channel: str, payload: str) -> None:
        self.stats["notifies"] += 1
        if channel == LOG_CHANNEL:
            try:
                head = int(payload)
            except ValueError:
                head = self.relayed + 1
            if head > self.relayed:
                self._wake()
        elif channel == EPHEMERAL_CHANNEL:
            try:
                message = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return
            if isinstance(message, dict) and message.get("node") != self.node_id:
                self._call(self._deliver_remote, message.get("event"))


def attach(service: Any) -> None:
    """Make a :class:`~syncengine.server.service.ServerService` on PostgreSQL a cluster
    node: its hub becomes a :class:`ClusterHub`, its REST and login limits shared."""
    storage = service.storage
    if not isinstance(storage, PostgresStorage):
        raise TypeError("a cluster node needs a PostgresStorage")
    config = service.config
    service.hub = ClusterHub(config, storage)
    service.rest_limiter = SharedRateLimiter(storage, config.rate_per_s, config.rate_burst, "rest")
    service.pull_limiter = SharedRateLimiter(
        storage, config.pull_rate_per_s, config.pull_burst, "pull"
    )
    service.login_limiter = SharedRateLimiter(
        storage, config.login_rate_per_s, config.login_burst, "login"
    )
    # issue 13: failed logins and registrations per client address, one budget for the cluster
    service.login_fail_limiter = SharedRateLimiter(
        storage, config.login_fail_rate_per_s, config.login_fail_burst, "login_fail"
    )
    service.login_fail_ip_limiter = SharedRateLimiter(
        storage, config.login_fail_ip_rate_per_s, config.login_fail_ip_burst, "login_fail_ip"
    )
    service.register_limiter = SharedRateLimiter(
        storage, config.register_rate_per_s, config.register_burst, "register"
    )
