"""The pure sync protocol against an in-memory server, joined by a fake link (as h11's
``ConnectionPair``): no socket, no SQLite, no clock.

The server is the contract suite's model server (events with ``pos``/``seq``, pushes
deduplicated on (user, device, op id)) plus what these scenarios need: retention (410), a
request refused as a whole because of one bad operation, and 429 with Retry-After. The client
is :class:`SyncProtocol` and a store reduced to dictionaries; the driver below only moves data
between them, as ``client/session.py`` does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from syncengine.core.push import PushStep
from syncengine.core.requests import ConversationsSnapshot
from syncengine.core.sync import SyncProtocol
from syncengine.errors import CursorExpired, RateLimited, Rejected, ServerUnavailable
from syncengine.events import Discontinuity, DurableEvent, MessageReceived, ServerEvent
from syncengine.models import ConnectionState as CS
from syncengine.models import OpKind, OutboxItem, OutboxState
from syncengine.wire import EventPage, HistoryMessage, HistoryPageWire, OpResult
from tests.contract.test_model_statemachine import (
    CONVERSATIONS,
    DEVICE,
    OTHER,
    USER,
    ModelServer,
)

NOW = 10_000.0
POISON = "\x00poison"


class Server(ModelServer):
    """The model server with retention, a whole-request refusal and a rate limit."""

    def __init__(self) -> None:
        super().__init__()
        self.oldest = 0  # pulls from below this cursor get 410 Gone
        self.throttle: float | None = None  # the next push answers 429 with this Retry-After
        self.pushes = 0

    def push_request(self, ops: list[dict[str, Any]]) -> list[OpResult]:
        self.pushes += 1
        if self.throttle is not None:
            wait, self.throttle = self.throttle, None
            raise RateLimited("too many requests", retry_after=wait)
        if any(op["body"] == POISON for op in ops):
            raise Rejected("invalid", "an operation is malformed", status=422)
        return [OpResult(**r) for r in self.push(USER, DEVICE, ops)]

    def pull_request(self, since: int, limit: int) -> EventPage:
        if since < self.oldest:
            raise CursorExpired(f"cursor {since} is older than {self.oldest}")
        return self.pull(since, limit)

    def conversations(self) -> tuple[list[dict[str, Any]], int]:
        return [{"id": cid} for cid in CONVERSATIONS], self.head

    def history(self, cid: str, before: int | None, limit: int) -> HistoryPageWire:
        older = [
            e
            for e in self.log
            if isinstance(e, MessageReceived)
            and e.conversation_id == cid
            and (before is None or e.seq < before)
        ][-limit:]
        return HistoryPageWire(
            messages=tuple(
                HistoryMessage(
                    message_id=e.message_id,
                    conversation_id=cid,
                    seq=e.seq,
                    op_id=e.op_id,
                    sender=e.sender,
                    body=e.body,
                    ts_ms=e.ts_ms,
                )
                for e in older
            ),
            end_of_history=len(older) < limit,
        )


class Client:
    """The protocol and a store reduced to dictionaries, joined to a :class:`Server`."""

    def __init__(self, server: Server, *, batch: int = 10, page: int = 4) -> None:
        self.server = server
        self.protocol = SyncProtocol(push_batch=batch, page_limit=page, rng=lambda: 1.0)
        self.outbox: dict[str, list[Any]] = {}  # op id -> [item, state, due at]
        self.messages: dict[str, tuple[str, int]] = {}  # message id -> (conversation, seq)
        self.stored_cursor = 0
        self.emitted: list[ServerEvent | Discontinuity] = []
        # Faults on the link: called with the request's name; may raise or return a mangler.
        self.fault: Callable[[str], Callable[[Any], Any] | None] = lambda _kind: None

    # --- the app ------------------------------------------------------------------------

    def send(self, n: int, cid: str = CONVERSATIONS[0], body: str | None = None) -> str:
        op_id = f"op-{len(self.outbox) + 1}"
        item = OutboxItem(
            op_id=op_id,
            kind=OpKind.SEND,
            conversation_id=cid,
            payload={"body": body if body is not None else f"hello {n}"},
            state=OutboxState.PENDING,
        )
        self.outbox[op_id] = [item, OutboxState.PENDING, 0.0]
        return op_id

    def states(self) -> dict[str, OutboxState]:
        return {op: row[1] for op, row in self.outbox.items()}

    # --- the driver: moves data only ----------------------------------------------------

    def push_all(self, now: float) -> None:
        while items := self._claim(now):
            push = self.protocol.push_round(items)
            while (batch := push.next_batch()) is not None:
                try:
                    results = self._link("push", self.server.push_request)(
                        self.protocol.push_request(batch)["ops"]
                    )
                except Exception as exc:
                    step = push.receive_error(exc, now)
                    self._write(step)
                    if step.reraise:
                        raise
                    continue
                self._write(push.receive_results(results, now))
            if push.stopped:
                return

    def catch_up(self) -> None:
        while True:
            try:
                page = self._link("pull", self.server.pull_request)(**self.protocol.pull_request())
            except CursorExpired:
                self._resync()
                continue
            self.apply(page)
            if self.protocol.receive_page(page):
                return

    def apply(self, page: EventPage) -> None:
        """Store a page's events with the cursor the protocol says (one transaction)."""
        cursor = self.protocol.page_cursor(page)
        for ev in page.events:
            if isinstance(ev, MessageReceived):
                self.messages[ev.message_id] = (ev.conversation_id, ev.seq)
        assert isinstance(cursor, int) and cursor >= self.stored_cursor, "cursor moved back"
        self.stored_cursor = cursor
        self.emitted += self.protocol.receive_applied(page.events, listening=True)

    def _resync(self) -> None:
        plan = self.protocol.start_resync()
        while (request := plan.next_request()) is not None:
            if isinstance(request, ConversationsSnapshot):
                plan.receive_snapshot(*self.server.conversations())
                continue
            writes = plan.receive_history(
                self.server.history(request.conversation_id, request.before, request.limit)
            )
            for m in writes.messages:
                self.messages[m.message_id] = (m.conversation_id, m.seq)
        self.stored_cursor = plan.new_cursor()
        known = {cid: seq for cid, seq in self.messages.values()}
        self.emitted.append(self.protocol.resynced(self.stored_cursor, known))

    def _link(self, kind: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def perform(*args: Any, **kwargs: Any) -> Any:
            mangle = self.fault(kind)
            answer = call(*args, **kwargs)
            return mangle(answer) if mangle is not None else answer

        return perform

    def _claim(self, now: float) -> list[OutboxItem]:
        due = [
            row[0]
            for row in self.outbox.values()
            if row[1] is OutboxState.PENDING and row[2] <= now
        ][: self.protocol.push_batch]
        for item in due:
            self.outbox[item.op_id][1] = OutboxState.SENDING
        return due

    def _write(self, step: PushStep) -> None:
        for res in step.sent:
            self.outbox[res.op_id][1] = OutboxState.SENT
        for failed in step.failed:
            self.outbox[failed.item.op_id][1] = OutboxState.FAILED
        for retry in step.retry:
            for op_id in retry.op_ids:
                self.outbox[op_id][1:] = [OutboxState.PENDING, retry.at]


def server_bodies(server: Server) -> list[str]:
    return [m["body"] for cid in CONVERSATIONS for m in server.messages(cid)]


def converged(client: Client, server: Server) -> bool:
    truth = {
        e.message_id: (e.conversation_id, e.seq)
        for e in server.log
        if isinstance(e, MessageReceived)
    }
    return client.messages == truth


def durable_emitted_once(client: Client) -> bool:
    positions = [ev.pos for ev in client.emitted if isinstance(ev, DurableEvent)]
    return len(positions) == len(set(positions))


def lose_answer(_answer: Any) -> Any:
    """The server did the work; its answer is lost on the way back."""
    raise ServerUnavailable("connection reset after the server applied it")


# --- the scenarios ----------------------------------------------------------------------------


def test_lost_acks_are_replayed_and_deduplicated() -> None:
    server = Server()
    client = Client(server, batch=2)
    for n in range(5):
        client.send(n)
    lost = iter([True, False, True])

    def lose_ack(kind: str) -> Callable[[Any], Any] | None:
        return lose_answer if kind == "push" and next(lost, False) else None

    client.fault = lose_ack
    for _ in range(10):  # each session ends on the lost ack; the next one replays
        try:
            client.push_all(NOW)
        except ServerUnavailable:
            continue
        break
    assert set(client.states().values()) == {OutboxState.SENT}
    assert sorted(server_bodies(server)) == [f"hello {n}" for n in range(5)]  # each once
    client.catch_up()
    assert converged(client, server) and durable_emitted_once(client)


def test_a_lost_ack_while_live_retries_on_a_timer() -> None:
    server = Server()
    client = Client(server)
    p = client.protocol
    for state in (CS.CONNECTING, CS.SYNCING, CS.LIVE):
        p.transition(state)
    p.receive_ready(server.head)
    client.send(1)
    client.fault = lambda kind: lambda _a: (_ for _ in ()).throw(ServerUnavailable("reset"))
    client.push_all(NOW)  # no exception: the live link stays up
    [(_item, state, due)] = client.outbox.values()
    assert state is OutboxState.PENDING and due == NOW + 0.5
    client.fault = lambda kind: None
    client.push_all(NOW + 0.1)
    assert server.pushes == 1  # not due yet
    client.push_all(NOW + 0.5)
    assert client.states() == {"op-1": OutboxState.SENT}
    assert server_bodies(server) == ["hello 1"]


@pytest.mark.parametrize("seed", range(5))
def test_duplicated_and_reordered_pages_change_nothing(seed: int) -> None:
    server = Server()
    client = Client(server, page=3)
    rng = random.Random(seed)
    for n in range(20):
        server.message(CONVERSATIONS[n % 2], OTHER, f"bob {n}")
    answered: list[EventPage] = []

    def mangle(kind: str) -> Callable[[Any], Any] | None:
        def shuffle(page: EventPage) -> EventPage:
            answered.append(page)
            events = list(page.events)
            rng.shuffle(events)
            return EventPage(events=tuple(events), next=page.next, has_more=page.has_more)

        return shuffle if kind == "pull" else None

    client.fault = mangle
    client.catch_up()
    for page in rng.sample(answered, k=len(answered)):  # late answers to retried requests
        client.apply(page)
        client.protocol.receive_page(page)
    assert client.protocol.cursor == client.stored_cursor == server.head
    assert converged(client, server)
    assert durable_emitted_once(client)
    assert len([e for e in client.emitted if isinstance(e, MessageReceived)]) == 20


def test_a_410_resyncs_once_and_continues_without_duplicates() -> None:
    server = Server()
    client = Client(server, page=4)
    for n in range(6):
        server.message(CONVERSATIONS[0], OTHER, f"early {n}")
    client.catch_up()
    old = client.stored_cursor
    for n in range(9):
        server.message(CONVERSATIONS[n % 2], OTHER, f"while away {n}")
    server.oldest = server.head - 2  # retention dropped what the client missed
    client.catch_up()
    [disc] = [e for e in client.emitted if isinstance(e, Discontinuity)]
    assert disc == Discontinuity(old_cursor=old, new_cursor=server.head)
    assert client.protocol.cursor == client.stored_cursor == server.head
    assert converged(client, server)
    server.message(CONVERSATIONS[1], OTHER, "after")
    client.catch_up()
    assert converged(client, server) and durable_emitted_once(client)
    assert len([e for e in client.emitted if isinstance(e, Discontinuity)]) == 1


def test_a_poison_op_is_isolated_and_the_rest_flow() -> None:
    server = Server()
    client = Client(server, batch=8)
    ids = [client.send(n) for n in range(7)]
    bad = client.send(99, body=POISON)
    ids += [client.send(n) for n in range(7, 9)]
    client.push_all(NOW)
    states = client.states()
    assert states.pop(bad) is OutboxState.FAILED
    assert set(states.values()) == {OutboxState.SENT}
    assert sorted(server_bodies(server)) == sorted(f"hello {n}" for n in range(9))
    # log2 requests per level of the bisection, not one per op:
    assert server.pushes <= 1 + 2 * 3 + 1
    client.catch_up()
    assert converged(client, server)


def test_429_waits_for_retry_after() -> None:
    server = Server()
    client = Client(server, batch=4)
    for n in range(4):
        client.send(n)
    server.throttle = 7.0
    client.push_all(NOW)
    assert set(client.states().values()) == {OutboxState.PENDING}
    assert {row[2] for row in client.outbox.values()} == {NOW + 7.0}
    client.push_all(NOW + 6.9)
    assert set(client.states().values()) == {OutboxState.PENDING}  # not before Retry-After
    client.push_all(NOW + 7.0)
    assert set(client.states().values()) == {OutboxState.SENT}
    assert len(server_bodies(server)) == 4 and server.pushes == 2


def test_429_in_a_bisected_request_defers_the_other_half() -> None:
    server = Server()
    client = Client(server, batch=4)
    for n in range(3):
        client.send(n)
    client.send(3, body=POISON)
    calls = iter([False, True])  # the whole request is refused, then the first half gets 429

    def throttle_second(kind: str) -> None:
        if kind == "push" and next(calls, False):
            server.throttle = 7.0

    client.fault = lambda kind: throttle_second(kind)
    client.push_all(NOW)
    due = {op: row[2] for op, row in client.outbox.items()}
    assert due == {"op-1": NOW + 7.0, "op-2": NOW + 7.0, "op-3": NOW, "op-4": NOW}
    assert set(client.states().values()) == {OutboxState.PENDING}
    client.fault = lambda kind: None
    client.push_all(NOW + 7.0)
    assert client.states() == {
        "op-1": OutboxState.SENT,
        "op-2": OutboxState.SENT,
        "op-3": OutboxState.SENT,
        "op-4": OutboxState.FAILED,
    }
