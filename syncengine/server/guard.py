"""The connection guard: no connection flood can exhaust the server's file descriptors.

uvicorn times out idle keep-alive connections (``timeout_keep_alive``), but not a connection
that never completes its request head: a client that connects and sends nothing, or half a
head (slowloris), holds a descriptor for ever. Past the process's descriptor limit,
``accept()`` fails in a loop, every legitimate request waits, and asyncio logs a traceback per
failed accept. The guard closes that door at the protocol level:

- **caps**: connections per client address (IPv6 per /64), and in all; the total is also
  bounded by the descriptor limit (``RLIMIT_NOFILE``), keeping a reserve for files and for
  the connections accepted in one go. A connection past its address's cap is refused
  cheaply: aborted (RST) as soon as it is accepted, before a byte of it is read. At the total
  cap, a new connection first evicts the connection that has waited longest for a request
  head (a half-open one, or an idle keep-alive one), so that a flood of half-open
  connections from many addresses cannot keep a client that sends its request at once out;
  only when none waits is the new one refused.
- **request head timeout**: a connection has ``header_timeout_s`` to send a complete request
  head, from its opening or from the end of its previous response; otherwise it is aborted.
  A WebSocket handshake is a request head too; after it, the live channel's own limits hold
  (the ``auth`` frame timeout, pings).

:func:`guarded_protocols` builds the uvicorn protocol classes (h11 and websockets-sansio
subclasses) that consult one :class:`ConnectionGuard`;
:class:`~syncengine.server.runner.ServerHandle` passes them to uvicorn. The sizing
(:func:`connection_limits`) and the counting (:class:`ConnectionGuard`) are plain code,
tested without sockets.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Protocol

import attrs
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from syncengine.server.rules import address_key

__all__ = [
    "FD_RESERVE",
    "ConnectionGuard",
    "ConnectionLimits",
    "GuardedH11Protocol",
    "GuardedWebSocketProtocol",
    "connection_limits",
    "descriptor_limit",
    "guarded_protocols",
]

log = logging.getLogger("syncengine.server")

#: Descriptors kept for everything but connections: the database and its -wal/-shm, the
#: listening socket, the event loop, standard streams, log files.
FD_RESERVE = 32
#: At most one refusal line per this many seconds (with the count of the others).
REFUSAL_LOG_INTERVAL_S = 10.0


#: Connections looked at, oldest first, for one eviction.
EVICTION_SCAN = 64


class Evictable(Protocol):
    """What the guard asks of a connection it may evict."""

    def waiting_for_head(self) -> bool:
        """True while the connection waits for a request head (nothing in progress)."""
        ...

    def evict(self) -> None:
        """Close the connection now."""
        ...


def descriptor_limit() -> int:
    """The process's soft limit of open descriptors (``RLIMIT_NOFILE``)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 1 << 16
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


@attrs.frozen
class ConnectionLimits:
    """How many connections the server holds.

    Attributes:
        max_connections: open connections in all (past it, new ones are refused).
        per_address: open connections per client address (``None``: no cap).
        accept_batch: connections accepted in one go (the listen backlog); they hold a
            descriptor each until the guard has looked at them.
    """

    max_connections: int
    per_address: int | None
    accept_batch: int


def connection_limits(
    nofile: int, max_connections: int | None, per_address: int | None, backlog: int = 2048
) -> ConnectionLimits:
    """Size the caps so that connections can never exhaust the descriptors.

    asyncio accepts up to ``backlog`` connections per wake-up before any protocol sees them,
    and a refused connection holds its descriptor for a few loop turns; so the total cap
    leaves room for four such batches besides :data:`FD_RESERVE`.

    Args:
        nofile: the descriptor limit (:func:`descriptor_limit`).
        max_connections: the configured total cap (``None``: as many as descriptors allow).
        per_address: the configured cap per address (``None``: none).
        backlog: the most connections accepted in one go.
    """
    budget = max(16, nofile - FD_RESERVE)
    batch = max(8, min(backlog, budget // 16))
    by_descriptors = max(8, budget - 4 * batch)
    total = by_descriptors if max_connections is None else min(max_connections, by_descriptors)
    return ConnectionLimits(max_connections=total, per_address=per_address, accept_batch=batch)


class ConnectionGuard:
    """Counts open connections by client address; admits or refuses new ones.

    Args:
        limits: the caps.
        header_timeout_s: time a connection has to send a complete request head.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        limits: ConnectionLimits,
        header_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.header_timeout_s = header_timeout_s
        self._clock = clock
        self._open: dict[object, str] = {}  # transport -> address key
        self._per_address: collections.Counter[str] = collections.Counter()
        # Connections since they began to wait for a request head, oldest first.
        self._waiting: collections.OrderedDict[object, Evictable] = collections.OrderedDict()
        self.refused = 0
        self.timed_out = 0
        self.evicted = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    @property
    def open_connections(self) -> int:
        """Connections admitted and not closed yet."""
        return len(self._open)

    def open_from(self, address: str) -> int:
        """Connections open from ``address`` (or its /64)."""
        return self._per_address.get(address_key(address), 0)

    def admit(self, conn: object, address: str) -> bool:
        """Admit a new connection from ``address``; False when a cap refuses it.

        At the total cap, the connection that has waited longest for a request head is
        evicted to make room (see the module's docstring).
        """
        key = address_key(address)
        cap = self.limits.per_address
        if cap is not None and self._per_address[key] >= cap:
            self._refuse(key, f"{cap} connections open from it")
            return False
        if len(self._open) >= self.limits.max_connections and not self._evict_one():
            self._refuse(key, f"{len(self._open)} connections open in all")
            return False
        self._open[conn] = key
        self._per_address[key] += 1
        return True

    def waiting(self, conn: object, connection: Evictable) -> None:
        """``conn`` begins to wait for a request head (opened, or a response finished)."""
        self._waiting.pop(conn, None)
        self._waiting[conn] = connection

    def release(self, conn: object) -> None:
        """Forget a closed connection (idempotent; unknown connections are ignored)."""
        self._waiting.pop(conn, None)
        key = self._open.pop(conn, None)
        if key is None:
            return
        self._per_address[key] -= 1
        if self._per_address[key] <= 0:
            del self._per_address[key]

    def _evict_one(self) -> bool:
        """Evict the connection that has waited longest for a request head, if any."""
        for _ in range(min(EVICTION_SCAN, len(self._waiting))):
            conn, connection = self._waiting.popitem(last=False)
            if conn not in self._open:
                continue
            if connection.waiting_for_head():
                self.evicted += 1
                self.release(conn)  # its place is the new one's now
                connection.evict()
                return True
            # busy with a request: no longer a candidate until it waits again
        return False

    def _refuse(self, key: str, why: str) -> None:
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning(
                "refused %d connection(s) since the last report; the latest from %s: %s",
                self._unlogged,
                key,
                why,
            )
            self._logged_at, self._unlogged = now, 0


def _peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return ""


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol that gives its connection's place back when it closes.

    ``guard`` is set on the subclass :func:`guarded_protocols` makes.
    """

    guard: ConnectionGuard

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.guard.release(self.transport)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that admits connections through the guard and times out
    unfinished request heads (an :class:`Evictable`).

    ``guard`` is set on the subclass :func:`guarded_protocols` makes.
    """

    guard: ConnectionGuard
    _admitted = False
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.guard.admit(transport, _peer_host(transport)):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._admitted = True
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def waiting_for_head(self) -> bool:
        """True while nothing of a request is in progress (a new head is awaited)."""
        return (
            not self.transport.is_closing()
            and self.transport.get_protocol() is self
            and self.conn.their_state is h11.IDLE
            and (self.cycle is None or self.cycle.response_complete)
        )

    def evict(self) -> None:
        """Close the connection now (the guard needs its place)."""
        self._cancel_head_timer()
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return  # refused: nothing of it was set up
        self._cancel_head_timer()
        try:
            super().connection_lost(exc)
        finally:
            self.guard.release(self.transport)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request head has the same time

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._cancel_head_timer()
        super().handle_websocket_upgrade(event)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.guard.header_timeout_s, self._head_timeout)
        self.guard.waiting(self.transport, self)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.waiting_for_head():
            self.guard.timed_out += 1
            log.debug("request head timed out from %s", _peer_host(self.transport))
            self.transport.abort()


def guarded_protocols(
    guard: ConnectionGuard,
) -> tuple[type[GuardedH11Protocol], type[GuardedWebSocketProtocol]]:
    """uvicorn's h11 and websockets-sansio protocols, bound to ``guard``.

    Returns:
        The HTTP protocol class (for ``uvicorn.Config(http=...)``) and the WebSocket one
        (``ws=...``).
    """
    http = type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
    ws = type("GuardedWebSocketProtocol", (GuardedWebSocketProtocol,), {"guard": guard})
    return http, ws
