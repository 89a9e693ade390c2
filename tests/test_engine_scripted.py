"""Engine decisions against a scripted transport: no sockets, no server.

The :class:`ScriptedServer` implements the :class:`~syncengine.transport.base.Transport`
protocol with an empty event log and one contact (bob); its live links are driven by the test
(:class:`ScriptedLink`). These tests pin what the session runner does when one request fails
while the live link is healthy, and how it winds down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncengine import (
    ConnectionState,
    ConnectionStateChanged,
    ConversationUpdated,
    PresenceStatus,
    ServerUnavailable,
    SyncEngine,
)
from syncengine.core.cursor import V1
from syncengine.transport.snapshots import ConversationList, PresenceSnapshot
from syncengine.wire import EventPage
from tests.conftest import FAST
from tests.test_engine import eventually


class ScriptedLink:
    """A live link the test drives: ``recv`` waits for :meth:`deliver`. With ``hold``, a
    cancelled ``recv`` winds down only once :attr:`release` is set (or it is cancelled
    again), so a test can keep the engine inside its session teardown as long as it likes."""

    def __init__(self, head: int = 0, *, hold: bool = False) -> None:
        self.head = head
        self.hold = hold
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.winding_down = asyncio.Event()
        self.release = asyncio.Event()

    def deliver(self, event: Any) -> None:
        self.events.put_nowait(event)

    async def recv(self) -> Any:
        try:
            return await self.events.get()
        except asyncio.CancelledError:
            self.winding_down.set()
            if self.hold:
                await self.release.wait()
            raise

    async def send_typing(self, conversation_id: str, typing: bool) -> None:
        pass

    async def send_presence(self, status: str) -> None:
        pass

    async def close(self) -> None:
        pass


class ScriptedServer:
    """A :class:`~syncengine.transport.base.Transport` with an empty log and one contact
    (bob, online); ``presence_errors`` are raised by the next presence snapshots. With
    ``hold_first_link``, the first live link holds its wind-down (see :class:`ScriptedLink`).
    """

    capabilities = V1

    def __init__(self, *, hold_first_link: bool = False) -> None:
        self.hold_first_link = hold_first_link
        self.links: list[ScriptedLink] = []
        self.presence_calls = 0
        self.presence_errors: list[Exception] = []
        self.presence_always_fails = False

    async def login(self, user: str, password: str, device: str) -> str:
        return "scripted-token"

    def set_token(self, token: str | None) -> None:
        pass

    async def push(self, ops: Sequence[dict[str, Any]]) -> list[Any]:
        raise AssertionError("nothing is pushed in these tests")

    async def pull(self, since: int, limit: int) -> EventPage:
        await asyncio.sleep(0)  # a request yields to the loop, as a real one does
        return EventPage(events=(), next=since, has_more=False)

    async def history(self, conversation_id: str, before: int | None, limit: int) -> Any:
        raise AssertionError("no history is fetched in these tests")

    async def conversations(self) -> tuple[list[dict[str, Any]], int]:
        return [], 0

    async def presence(self) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        self.presence_calls += 1
        if self.presence_always_fails:
            raise ServerUnavailable("server error 503: presence down")
        if self.presence_errors:
            raise self.presence_errors.pop(0)
        return [{"user": "bob", "status": "online", "ts_ms": 1_000 + self.presence_calls}]

    async def conversation_list(self) -> ConversationList:
        raise AssertionError("the engine reads the conversation list as dicts")

    async def presence_list(self) -> tuple[PresenceSnapshot, ...]:
        raise AssertionError("the engine reads the presence snapshot as dicts")

    async def connect_live(self, since: Any = None) -> ScriptedLink:
        link = ScriptedLink(hold=self.hold_first_link and not self.links)
        self.links.append(link)
        return link

    async def aclose(self) -> None:
        pass


async def scripted_engine(tmp_path: Path, server: ScriptedServer) -> SyncEngine:
    engine = SyncEngine(tmp_path / "scripted.db", transport_factory=lambda _url: server, **FAST)
    await engine.open()
    await engine.login("http://127.0.0.1:9", "alice", "pw")  # starts the sync loop
    return engine


async def test_close_while_a_failed_session_winds_down_stops_the_engine(tmp_path: Path) -> None:
    # A session that failed (here: its presence snapshot) cancels its reader and applier
    # and waits for them. close() arriving in that moment must stop the sync loop: it used
    # to be swallowed with the reader's own CancelledError, the loop backed off and
    # reconnected, and close() waited for it for ever (a test teardown hung for 120 s).
    server = ScriptedServer(hold_first_link=True)
    server.presence_always_fails = True
    engine = await scripted_engine(tmp_path, server)
    try:
        await eventually(lambda: bool(server.links), timeout=10)
        link = server.links[0]
        await asyncio.wait_for(link.winding_down.wait(), 10)  # the loop waits for its reader
        await asyncio.wait_for(engine.close(), 5)
        assert len(server.links) == 1  # no session was started after close()
        assert engine.state is ConnectionState.OFFLINE
    finally:
        for link in server.links:
            link.release.set()
        await asyncio.wait_for(engine.close(), 10)


async def test_failed_presence_refresh_keeps_the_live_link(tmp_path: Path) -> None:
    # A presence snapshot refused while the live link is healthy is retried on a timer,
    # like a pull: the link (on which echoes and other users' messages arrive) stays up.
    server = ScriptedServer()
    engine = await scripted_engine(tmp_path, server)
    changes: list[ConnectionStateChanged] = []
    try:
        assert await engine.wait_for_state(ConnectionState.LIVE, timeout=10)
        engine.on(ConnectionStateChanged, changes.append)
        assert server.presence_calls == 1
        server.presence_errors = [ServerUnavailable("server error 503: injected fault")]
        # A new conversation brings new contacts: their presence is only in a snapshot.
        server.links[0].deliver(
            ConversationUpdated(
                pos=1,
                conversation_id="c-1",
                seq=1,
                ts_ms=1_000,
                title="with bob",
                members=("alice", "bob"),
                actor="bob",
            )
        )
        await eventually(lambda: server.presence_calls >= 3, timeout=10)  # refused, retried
        presence = engine.store.presence("bob")
        assert presence is not None and presence.status is PresenceStatus.ONLINE
        assert changes == []  # never left LIVE
        assert engine.state is ConnectionState.LIVE
        assert len(server.links) == 1  # the same live link throughout
    finally:
        for link in server.links:
            link.release.set()
        await asyncio.wait_for(engine.close(), 10)


async def test_waiting_out_an_apply_keeps_a_cancellation_that_lands_meanwhile() -> None:
    # The catch-up waits for an apply running on its thread before it lets go of the store
    # (client/catchup.py). A cancellation (close()) landing during that wait must still end
    # the task once the apply is over: under suppress(BaseException) it was swallowed.
    from syncengine.client.tasks import wait_through_cancel

    loop = asyncio.get_running_loop()
    apply: asyncio.Future[None] = loop.create_future()
    waiting = loop.create_task(wait_through_cancel([apply]))
    await asyncio.sleep(0)  # the task is now inside its wait
    waiting.cancel()
    await asyncio.sleep(0)
    assert not waiting.done()  # the apply has not ended: the store is still in use
    apply.set_exception(RuntimeError("the page failed"))
    await asyncio.wait([waiting], timeout=5)
    assert waiting.cancelled()  # the cancellation was kept, the apply's failure retrieved
