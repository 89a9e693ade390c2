"""A thread-backed wrapper for applications that are not async.

:class:`BlockingEngine` runs a :class:`~syncengine.client.engine.SyncEngine` on an event loop in a
background thread and offers the same API as plain methods. Callbacks registered with
:meth:`BlockingEngine.on` run on that background thread: keep them short, or hand the event
to your own thread (e.g. with ``queue.Queue``).

::

    with BlockingEngine("alice.db") as engine:
        engine.login("http://127.0.0.1:8765", "alice", "secret")
        conv = engine.create_conversation("Lunch", members=["bob"])
        engine.send(conv.id, "Noon?")
        engine.wait_for_pending(timeout=10)
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from syncengine.client.engine import SyncEngine
from syncengine.events import Event, SyncCompleted
from syncengine.models import (
    ConnectionState,
    Conversation,
    HistoryPage,
    Message,
    OutboxItem,
    Presence,
    PresenceStatus,
    SyncHealth,
    Typing,
)

__all__ = ["BlockingEngine"]

T = TypeVar("T")
E = TypeVar("E")


class BlockingEngine:
    """The :class:`SyncEngine` API for plain threads. Arguments are those of SyncEngine.

    Every method blocks until the engine has done the work (for writes: until the operation
    is durably queued) and raises the same typed exceptions.
    """

    def __init__(self, *args: Any, call_timeout_s: float | None = 60.0, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._timeout = call_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._engine: SyncEngine | None = None

    def __enter__(self) -> BlockingEngine:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Start the background loop and open the engine."""
        if self._thread is not None:
            return
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                _drain(loop)

        self._thread = threading.Thread(target=run, name="syncengine-loop", daemon=True)
        self._thread.start()
        ready.wait()

        async def make() -> SyncEngine:
            engine = SyncEngine(*self._args, **self._kwargs)
            await engine.open()
            return engine

        try:
            self._engine = self._call(make())
        except BaseException:
            self._shutdown_loop()
            raise

    def close(self) -> None:
        """Close the engine (nothing is left SENDING) and stop the background loop."""
        if self._engine is not None:
            try:
                self._call(self._engine.close())
            finally:
                self._engine = None
                self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("BlockingEngine is not open")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout if timeout is not None else self._timeout)

    @property
    def engine(self) -> SyncEngine:
        if self._engine is None:
            raise RuntimeError("BlockingEngine is not open")
        return self._engine

    # --- the API ------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self.engine.state

    def login(self, server: str, user: str, password: str, *, device: str | None = None) -> None:
        self._call(self.engine.login(server, user, password, device=device))

    def logout(self) -> None:
        self._call(self.engine.logout())

    def send(self, conversation_id: str, body: str, *, op_id: str | None = None) -> Message:
        return self._call(self.engine.send(conversation_id, body, op_id=op_id))

    def edit(self, conversation_id: str, body: str, **kwargs: Any) -> OutboxItem:
        return self._call(self.engine.edit(conversation_id, body, **kwargs))

    def delete(self, conversation_id: str, **kwargs: Any) -> OutboxItem:
        return self._call(self.engine.delete(conversation_id, **kwargs))

    def mark_read(self, conversation_id: str, seq: int | None = None) -> OutboxItem:
        return self._call(self.engine.mark_read(conversation_id, seq))

    def create_conversation(
        self, title: str, members: Sequence[str] = (), **kwargs: Any
    ) -> Conversation:
        return self._call(self.engine.create_conversation(title, members, **kwargs))

    def retry(self, op_ids: Sequence[str] | None = None) -> list[str]:
        return self._call(self.engine.retry(op_ids))

    def conversations(self) -> list[Conversation]:
        return self._call(self.engine.conversations())

    def messages(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> HistoryPage:
        return self._call(self.engine.messages(conversation_id, before=before, limit=limit))

    def presence(self, user: str) -> Presence | None:
        return self._call(self.engine.presence(user))

    def typing(self, conversation_id: str) -> list[Typing]:
        return self._call(self.engine.typing(conversation_id))

    def set_typing(self, conversation_id: str, typing: bool = True) -> None:
        self._call(self.engine.set_typing(conversation_id, typing))

    def set_presence(self, status: PresenceStatus | str) -> None:
        self._call(self.engine.set_presence(status))

    def health(self) -> SyncHealth:
        return self._call(self.engine.health())

    def sync_once(self) -> SyncCompleted:
        return self._call(self.engine.sync_once())

    def wait_for_pending(self, timeout: float | None = None) -> bool:
        wait = None if timeout is None else timeout + 5
        return self._call(self.engine.wait_for_pending(timeout), timeout=wait)

    def wait_for_state(self, state: ConnectionState, timeout: float | None = None) -> bool:
        wait = None if timeout is None else timeout + 5
        return self._call(self.engine.wait_for_state(state, timeout), timeout=wait)

    def on(self, event_type: type[E], callback: Callable[[E], Any]) -> Callable[[], None]:
        """Run ``callback(event)`` on the engine's thread for each event of that type."""
        return self.engine.on(event_type, callback)

    def events(self, *, timeout: float | None = None) -> Iterator[Event]:
        """Iterate over events from now on (blocking). Stops after ``timeout`` s of quiet."""
        q: queue.Queue[Event] = queue.Queue()
        unsubscribe = self.engine.on(object, q.put)  # type: ignore[arg-type]
        try:
            while True:
                try:
                    yield q.get(timeout=timeout)
                except queue.Empty:
                    return
        finally:
            self._loop.call_soon_threadsafe(unsubscribe) if self._loop else unsubscribe()


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still pending on a stopped loop, wait for them, and close it.

    A task left pending when its loop closes is reported by asyncio as "Task was destroyed
    but it is pending!" at exit; cancelling and awaiting each one ends it cleanly.
    """
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _inherit_docs() -> None:
    # Each blocking method documents itself with its async counterpart's docstring, so the
    # two APIs cannot drift apart in their documentation.
    for name, member in list(vars(BlockingEngine).items()):
        target = getattr(SyncEngine, name, None)
        if name.startswith("_") or target is None:
            continue
        func = member.fget if isinstance(member, property) else member
        if callable(func) and not (func.__doc__ or "").strip():
            func.__doc__ = f"Blocking form of ``SyncEngine.{name}``.\n\n{target.__doc__ or ''}"


_inherit_docs()
