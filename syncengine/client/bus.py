"""The event bus: subscriber queues and callbacks, fed by the engine and its session."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from syncengine.events import Event

__all__ = ["EventBus"]

log = logging.getLogger("syncengine.engine")

E = TypeVar("E")


class EventBus:
    """Delivers events to async-iterator subscribers and to callbacks.

    Args:
        spawn: runs a coroutine in the background (awaitable callbacks are spawned, never
            awaited by the emitter).
    """

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._spawn = spawn
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._callbacks: list[tuple[type, Callable[[Any], Any]]] = []
        self.dropped = 0

    @property
    def listening(self) -> bool:
        """True when someone subscribed (otherwise emitting is pointless work)."""
        return bool(self._subscribers or self._callbacks)

    def events(self, *, maxsize: int = 10_000) -> AsyncIterator[Event]:
        """A new subscription: an async iterator of every event from now on.

        A subscriber that falls ``maxsize`` events behind loses the oldest ones (counted in
        :attr:`dropped`); the store is the source of truth.
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
        """Call ``callback(event)`` for every event of ``event_type``; returns the unsubscriber.

        The callback's exceptions are logged, never raised into the emitter.
        """
        entry = (event_type, callback)
        self._callbacks.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(entry)

        return unsubscribe

    def emit(self, event: Event) -> None:
        """Deliver one event to every subscriber and matching callback."""
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)
        for event_type, callback in list(self._callbacks):
            if isinstance(event, event_type):
                try:
                    result = callback(event)
                    if inspect.isawaitable(result):
                        self._spawn(_guard(result))
                except Exception:
                    log.exception("event callback %r failed", callback)


async def _guard(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("event callback failed")
