"""The catch-up pipeline (``client/catchup.py``) against fakes: order, G3, failures."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from syncengine.client.catchup import AHEAD, CatchUp
from syncengine.errors import ServerUnavailable, StoreFull
from syncengine.wire import EventPage

pytestmark = pytest.mark.timeout(30)


class FakeCore:
    """The protocol's pull decisions, reduced to an int cursor."""

    def __init__(self) -> None:
        self.cursor = 0
        self.received: list[int] = []

    def pull_request(self) -> dict[str, Any]:
        return {"since": self.cursor}

    def prefetch_request(self, page: EventPage) -> dict[str, Any] | None:
        return {"since": page.next} if page.has_more else None

    def page_cursor(self, page: EventPage) -> int:
        return int(page.next)

    def receive_page(self, page: EventPage) -> bool:
        self.cursor = int(page.next)
        self.received.append(self.cursor)
        return not page.has_more

    def server_answered(self) -> None:
        pass


class FakeExchange:
    def __init__(self, fail_at: int | None = None, gate: threading.Event | None = None) -> None:
        self.session = type("S", (), {"core": FakeCore(), "require_store": lambda s: None})()
        self.pulled_total = 0
        self.applied: list[tuple[int, Any]] = []  # (first event, cursor), in commit order
        self.emitted: list[Any] = []
        self.emitted_sent: list[str] = []
        self.fail_at = fail_at
        self.gate = gate

    def apply_safely(self, events: Any, *, cursor: Any, synced: bool = False) -> list[str]:
        if self.gate is not None:
            assert self.gate.wait(10)
        if cursor == self.fail_at:
            raise StoreFull("disk full")
        self.applied.append((events[0], cursor))
        return [f"sent-by-{cursor}"]  # as if the page held the echo of an own send

    def readded(self, events: Any) -> list[str]:
        return []  # re-adds are end to end (tests/scenarios/test_rejected_ops.py)

    def emit_new(self, events: Any) -> None:
        self.emitted.extend(events)

    def emit_sent(self, events: Any, sent: Any) -> None:
        self.emitted_sent.extend(sent)

    async def _resync(self, transport: Any) -> None:
        raise AssertionError("no resync here")

    def send_epoch(self, transport: Any) -> None:
        pass  # the epoch's own tests are end to end (tests/scenarios/test_server_restore.py)

    def keep_epoch(self, transport: Any, page: EventPage) -> None:
        pass


class FakeTransport:
    """Pages of 100 events; ``since`` must follow the previous page's ``next``."""

    def __init__(self, pages: int, fail_at: int | None = None) -> None:
        self.pages = pages
        self.fail_at = fail_at
        self.asked: list[int] = []

    async def pull(self, since: int) -> EventPage:
        self.asked.append(since)
        if since == self.fail_at:
            raise ServerUnavailable("gone")
        nxt = since + 100
        return EventPage(
            events=tuple(range(since + 1, nxt + 1)), next=nxt, has_more=nxt < self.pages * 100
        )


async def test_pages_commit_in_order_each_with_its_cursor() -> None:
    exchange = FakeExchange()
    transport = FakeTransport(pages=12)
    pulled = await CatchUp(exchange, transport).run()  # type: ignore[arg-type]
    assert pulled == 1200 == exchange.pulled_total
    assert exchange.applied == [(i * 100 + 1, (i + 1) * 100) for i in range(12)]
    assert transport.asked == [i * 100 for i in range(12)]
    assert exchange.session.core.received == [(i + 1) * 100 for i in range(12)]
    assert exchange.emitted == list(range(1, 1201))
    # The own sends each page moved to SENT are reported with it, in page order.
    assert exchange.emitted_sent == [f"sent-by-{(i + 1) * 100}" for i in range(12)]


async def test_pages_are_pulled_ahead_of_the_apply_but_boundedly() -> None:
    gate = threading.Event()  # the apply thread is stuck on its first commit
    exchange = FakeExchange(gate=gate)
    transport = FakeTransport(pages=12)
    task = asyncio.create_task(CatchUp(exchange, transport).run())  # type: ignore[arg-type]
    for _ in range(200):
        await asyncio.sleep(0.005)
    assert len(transport.asked) == AHEAD + 1  # pulled ahead, then waiting for the apply
    gate.set()
    assert await task == 1200


async def test_a_failed_page_stops_every_later_one() -> None:
    # Page 3 (cursor 300) cannot be stored: pages 4+ must not commit past it (G3).
    exchange = FakeExchange(fail_at=300)
    with pytest.raises(StoreFull):
        await CatchUp(exchange, FakeTransport(pages=12)).run()  # type: ignore[arg-type]
    assert [cursor for _first, cursor in exchange.applied] == [100, 200]
    assert exchange.session.core.received == [100, 200]


async def test_pages_pulled_before_a_failed_pull_are_kept() -> None:
    exchange = FakeExchange()
    with pytest.raises(ServerUnavailable):
        await CatchUp(exchange, FakeTransport(pages=12, fail_at=500)).run()  # type: ignore[arg-type]
    assert [cursor for _first, cursor in exchange.applied] == [100, 200, 300, 400, 500]
    assert exchange.session.core.cursor == 500
