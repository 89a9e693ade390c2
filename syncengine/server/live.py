"""The live channel's state: connections, fan-out, typing and presence.

Everything here runs on the server's event loop thread. Durable events are fanned out by
:meth:`Hub.publish` right after their transaction commits, in ``pos`` order, to the
connections of the users in each event's audience; each connection has a bounded queue
drained by its own sender task, so one slow client never holds up the others (when its queue
overflows it is closed with ``1013``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable

import attrs
import orjson
from starlette.websockets import WebSocket

from syncengine.protocol import codec
from syncengine.protocol.bodies import PresenceEntry, ReadyFrame
from syncengine.protocol.events import (
    ServerEvent,
    TypingStarted,
    TypingStopped,
    UserPresenceChanged,
)
from syncengine.server.config import ServerConfig
from syncengine.server.rules import TokenBucket
from syncengine.server.storage.interface import Committed, ServerStorage

__all__ = ["CLOSE_DROPPED", "CLOSE_OVERFLOW", "CLOSE_POLICY", "Hub", "LiveConnection"]

log = logging.getLogger("syncengine.server.live")

CLOSE_POLICY = 1008  # unauthorized, not_a_member, rate_limited
CLOSE_OVERFLOW = 1013  # the send queue overflowed: reconnect and catch up over REST
CLOSE_DROPPED = 1012  # an injected fault dropped the connection


def _encode(event: ServerEvent) -> str:
    return orjson.dumps(codec.encode_event(event)).decode()


class LiveConnection:
    """One authenticated live connection: its queue of frames and its sender task.

    Args:
        hub: the hub it belongs to.
        user: the authenticated user.
        device: the authenticated device.
        expires_ms: when its token expires (the connection is closed then).
    """

    def __init__(self, hub: Hub, user: str, device: str, expires_ms: int) -> None:
        self.hub = hub
        self.user = user
        self.device = device
        self.expires_ms = expires_ms
        self.queue: collections.deque[str] = collections.deque()
        self.closing: tuple[int, str] | None = None
        self.bucket = TokenBucket(hub.config.ws_rate_per_s, hub.config.ws_burst)
        self.flood = 0
        self._wake = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None

    def push(self, text: str) -> None:
        """Queue one frame; a full queue closes the connection with ``1013``."""
        if self.closing is not None:
            return
        if len(self.queue) >= self.hub.config.ws_send_queue:
            self.close(CLOSE_OVERFLOW, "send queue overflow")
            return
        self.queue.append(text)
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        """Drop what is queued and close the connection with ``code`` as soon as possible."""
        if self.closing is None:
            self.closing = (code, reason)
            self.queue.clear()
            self._wake.set()

    async def run_sender(self, websocket: WebSocket) -> None:
        """Send queued frames in order until the connection is closed."""
        faults = self.hub.config.faults
        try:
            while True:
                while not self.queue and self.closing is None:
                    self._wake.clear()
                    await self._wake.wait()
                if (
                    self.closing is None
                    and faults.drop_rate
                    and faults.roll("drop", faults.drop_rate)
                ):
                    self.close(CLOSE_DROPPED, "injected fault: connection dropped")
                if self.closing is not None:
                    code, reason = self.closing
                    await websocket.close(code, reason)
                    return
                await websocket.send_text(self.queue.popleft())
        except Exception as exc:  # the peer went away mid-send: the receive loop sees it too
            log.debug("live sender for %s/%s ended: %r", self.user, self.device, exc)

    def start_expiry(self, loop: asyncio.AbstractEventLoop, now_ms: int) -> None:
        """Close the connection with ``1008 unauthorized`` when its token expires."""
        delay = max(0.0, (self.expires_ms - now_ms) / 1000)
        self._expiry = loop.call_later(delay, self.close, CLOSE_POLICY, "unauthorized")

    def stop_expiry(self) -> None:
        """Cancel the token expiry timer."""
        if self._expiry is not None:
            self._expiry.cancel()


@attrs.define
class _Presence:
    status: str = "offline"
    last_seen_ms: int | None = None
    connections: int = 0
    leave: asyncio.TimerHandle | None = None


@attrs.define
class _Typing:
    connection: LiveConnection | None
    timer: asyncio.TimerHandle


class Hub:
    """Live connections, typing and presence of one server.

    Args:
        config: the server configuration (durations, queue sizes, faults).
        storage: the server's storage (membership, for audiences).
    """

    def __init__(self, config: ServerConfig, storage: ServerStorage) -> None:
        self.config = config
        self.storage = storage
        self.connections: dict[str, set[LiveConnection]] = {}
        self._presence: dict[str, _Presence] = {}
        self._typing: dict[tuple[str, str], _Typing] = {}
        self.closed = False

    # --- connections -----------------------------------------------------------------------

    def register(self, user: str, device: str, expires_ms: int) -> LiveConnection:
        """Add a connection and queue its ``ready`` frame with the current head.

        Registration and reading the head happen without yielding to the loop, so every
        event committed after ``head`` reaches this connection and none before it does.
        """
        conn = LiveConnection(self, user, device, expires_ms)
        self.connections.setdefault(user, set()).add(conn)
        ready = ReadyFrame(
            user=user, device=device, head=self.storage.head, epoch=self.storage.epoch
        )
        conn.push(orjson.dumps(codec.encode_frame(ready)).decode())
        conn.start_expiry(asyncio.get_running_loop(), self.storage.now_ms())
        presence = self._presence.setdefault(user, _Presence())
        presence.connections += 1
        if presence.leave is not None:
            presence.leave.cancel()  # back before the leave debounce ran out: no flap
            presence.leave = None
        elif presence.status == "offline":
            self.set_status(user, "online")
        return conn

    def unregister(self, conn: LiveConnection) -> None:
        """Remove a closed connection: stop its typing, start the presence leave debounce."""
        conn.stop_expiry()
        conns = self.connections.get(conn.user)
        if self.closed or conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self.connections[conn.user]
        for key, typing in list(self._typing.items()):
            if typing.connection is conn:
                self.set_typing(key[0], key[1], False)
        presence = self._presence[conn.user]
        presence.connections -= 1
        if presence.connections == 0:
            presence.last_seen_ms = self.storage.now_ms()
            presence.leave = asyncio.get_running_loop().call_later(
                self.config.presence_leave_s, self._leave, conn.user
            )

    def close_all(self, code: int, reason: str) -> int:
        """Close every live connection; returns how many there were."""
        conns = [c for group in self.connections.values() for c in group]
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    def shutdown(self) -> None:
        """Cancel every timer (typing expiry, presence debounce) before the loop stops.

        Connections that end later (a handler cancelled after the storage closed) change
        nothing any more.
        """
        self.closed = True
        for typing in self._typing.values():
            typing.timer.cancel()
        self._typing.clear()
        for presence in self._presence.values():
            if presence.leave is not None:
                presence.leave.cancel()
                presence.leave = None
        for group in self.connections.values():
            for conn in group:
                conn.stop_expiry()

    # --- fan-out ---------------------------------------------------------------------------

    def publish(self, committed: Iterable[Committed]) -> None:
        """Queue committed events, in the given (``pos``) order, for their audiences."""
        for event in committed:
            for user in event.audience:
                for conn in self.connections.get(user, ()):
                    conn.push(event.data)

    def _send(self, event: ServerEvent, users: Iterable[str]) -> None:
        text = _encode(event)
        for user in users:
            for conn in self.connections.get(user, ()):
                conn.push(text)

    # --- typing ----------------------------------------------------------------------------

    def set_typing(
        self,
        conversation_id: str,
        user: str,
        typing: bool,
        connection: LiveConnection | None = None,
    ) -> None:
        """Start (or refresh) or stop ``user``'s typing in a conversation.

        Each start is sent to the other members with ``ttl_ms``; the server sends
        ``typing_stopped`` on a stop, when the typing expires, and when the typist's
        connection closes. The caller has checked membership.
        """
        key = (conversation_id, user)
        old = self._typing.pop(key, None)
        if old is not None:
            old.timer.cancel()
        now = self.storage.now_ms()
        audience = [m for m in self.storage.members(conversation_id) if m != user]
        if typing:
            timer = asyncio.get_running_loop().call_later(
                self.config.typing_ttl_s, self.set_typing, conversation_id, user, False
            )
            self._typing[key] = _Typing(connection, timer)
            ttl_ms = int(self.config.typing_ttl_s * 1000)
            self._send(
                TypingStarted(conversation_id=conversation_id, user=user, ttl_ms=ttl_ms, ts_ms=now),
                audience,
            )
        elif old is not None:
            self._send(
                TypingStopped(conversation_id=conversation_id, user=user, ts_ms=now), audience
            )

    # --- presence --------------------------------------------------------------------------

    def set_status(self, user: str, status: str) -> None:
        """Set a user's status and tell everyone who shares a conversation, if it changed."""
        presence = self._presence.setdefault(user, _Presence())
        now = self.storage.now_ms()
        if status != "offline":
            presence.last_seen_ms = now
        if presence.status == status:
            return
        presence.status = status
        self._send(
            UserPresenceChanged(
                user=user, status=status, last_seen_ms=presence.last_seen_ms, ts_ms=now
            ),
            self.storage.shared_users(user),
        )

    def _leave(self, user: str) -> None:
        presence = self._presence[user]
        presence.leave = None
        if presence.connections == 0:
            if presence.last_seen_ms is not None:
                self.storage.set_last_seen(user, presence.last_seen_ms)
            self.set_status(user, "offline")

    def presence_of(self, users: list[str]) -> list[PresenceEntry]:
        """Each user's status and last-seen time (offline when never seen)."""
        stored = self.storage.last_seen([u for u in users if u not in self._presence])
        now = self.storage.now_ms()
        out = []
        for user in users:
            presence = self._presence.get(user)
            if presence is None:
                status, seen = "offline", stored[user]
            else:
                status = presence.status
                seen = now if presence.status != "offline" else presence.last_seen_ms
            out.append(PresenceEntry(user=user, status=status, last_seen_ms=seen, ts_ms=now))
        return out
