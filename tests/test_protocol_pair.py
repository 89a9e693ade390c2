"""The pure sync protocol against the server's own rules, in memory, joined by a fake link
(as h11's ``ConnectionPair``): no socket, no SQLite, no clock.

The server is the real one without its routes and its database: :class:`ServerService`
(rate limits, token authentication, pushes, pages cut to size, history) over
:class:`MemoryStorage`, so every answer comes from ``server/rules.py`` and
``server/writes.py``: pushes deduplicated by the op records, pages from the real log and its
visibility spans, ``410`` from the retention rule (``rules.check_cursor``), a malformed
operation refused by ``protocol/ops.py``'s parsing (per operation, or the whole request when
its envelope is wrong), ``429`` from the token buckets with the wait they compute. Time is the
test's ``now``, injected into the service and the storage.

:class:`Server.handle` is the thin part: it does what ``server/app.py``'s routes do around
the service (parse the query and the batch envelope, assemble the page body, turn a domain
error into its status and body with the app's own ``error_response``), and the client reads
an error answer with the transport's ``error_from_body``, so the typed errors are the ones
the engine would see. The client is :class:`SyncProtocol` and a store reduced to
dictionaries; its driver only moves data between them, as ``client/session.py`` does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.core.policy import RetryAfterGate
from syncengine.core.push import PushStep
from syncengine.core.requests import ConversationsSnapshot
from syncengine.core.sync import SyncProtocol
from syncengine.errors import CursorExpired, RateLimited, ServerUnavailable, UsageError
from syncengine.events import Discontinuity, DurableEvent, MessageReceived, ServerEvent
from syncengine.models import ConnectionState as CS
from syncengine.models import OpKind, OutboxItem, OutboxState, new_id
from syncengine.protocol import codec, ops, requests
from syncengine.protocol.bodies import HistoryPageWire
from syncengine.protocol.errors import Rejection
from syncengine.server import rules
from syncengine.server.app import error_response
from syncengine.server.config import ServerConfig
from syncengine.server.service import ServerService
from syncengine.server.storage.memory import MemoryStorage
from syncengine.transport.rest import error_from_body
from syncengine.transport.snapshots import decode_conversations
from syncengine.wire import EventPage

USER, DEVICE, OTHER = "alice", "phone", "bob"
CONVERSATIONS = ("0b9b4f3c-2d0e-4c8a-9d5e-000000000001", "0b9b4f3c-2d0e-4c8a-9d5e-000000000002")
NOW = 10_000.0
BAD_OP_ID = "op 99"  # a space: outside the printable ASCII an op id is made of


class Clock:
    """The one clock of the pair: the driver sets it to the ``now`` it was given."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Server:
    """The reference server's service over in-memory storage, and what its routes add.

    Args:
        retention: the log keeps this many events (``--retention``).
        rate_per_s: sustained REST requests per second per user (``--rate``).
        rate_burst: the REST burst per user (``--burst``).
    """

    def __init__(
        self, *, retention: int | None = None, rate_per_s: float = 50.0, rate_burst: int = 100
    ) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage(retention=retention, clock=self.clock)
        config = ServerConfig(
            data_dir=Path("in-memory"),  # never opened: the storage is given
            retention=retention,
            rate_per_s=rate_per_s,
            rate_burst=rate_burst,
        )
        self.service = ServerService(config, self.storage, clock=self.clock)
        self.tokens: dict[str, str] = {}
        for user in (USER, OTHER):
            self.storage.create_user(user, b"salt", b"hash", "scrypt:2:8:1")
            self.tokens[user] = self.storage.issue_token(user, DEVICE, ttl_s=3600)
        for n, cid in enumerate(CONVERSATIONS):
            self.service.create_conversation(USER, cid, f"chat {n}", (USER, OTHER))
        self.log: list[tuple[float, str, str, int]] = []  # (now, method, path, status)

    # --- what the routes do -----------------------------------------------------------------

    def handle(self, request: requests.Request, user: str = USER) -> bytes:
        """Answer one request as ``user``: the 2xx body, or the typed error the client's
        transport makes of the error answer."""
        try:
            body = self._route(request, user)
        except Rejection as exc:
            answer = error_response(exc)
            self.log.append((self.clock.now, request.method, request.path, answer.status_code))
            raise error_from_body(
                answer.status_code,
                bytes(answer.body),
                retry_after=answer.headers.get("retry-after"),
            ) from None
        self.log.append((self.clock.now, request.method, request.path, 200))
        return body

    def _route(self, request: requests.Request, user: str) -> bytes:
        query = {key: str(value) for key, value in request.query}
        who, device = self.service.authenticate(
            f"Bearer {self.tokens[user]}", rules.rate_budget(request.method, request.path)
        )
        if request.path == "/v1/ops":
            batch = ops.parse_batch(orjson.loads(codec.dumps(request.body)))
            results = self.service.push(who, device, batch)
            return orjson.dumps({"results": [codec.encode_op_result(r) for r in results]})
        if request.path == "/v1/events":
            since = rules.check_query_int("since", query.get("since"), 0, 0)
            limit = rules.check_query_int("limit", query.get("limit"), ops.PULL_LIMIT_DEFAULT, 1)
            assert since is not None and limit is not None
            texts, nxt, more = self.service.pull(who, since, limit, query.get("epoch"))
            return b'{"events":[%s],"next":%d,"has_more":%s,"epoch":%s}' % (
                ",".join(texts).encode(),
                nxt,
                b"true" if more else b"false",
                orjson.dumps(self.storage.epoch),
            )
        if request.path == "/v1/conversations":
            return codec.dumps(codec.encode_body(self.service.conversations(who)))
        _v1, _conversations, cid, _messages = request.path.strip("/").split("/")
        before = rules.check_query_int("before", query.get("before"), None, 1)
        limit = rules.check_query_int("limit", query.get("limit"), ops.HISTORY_LIMIT_DEFAULT, 1)
        assert limit is not None
        messages, end = self.service.history(who, unquote(cid), before, limit)
        return codec.dumps(
            codec.encode_body(HistoryPageWire(messages=tuple(messages), end_of_history=end))
        )

    # --- the other side of the conversation, and the truth ----------------------------------

    def message(self, cid: str, sender: str, body: str) -> None:
        """Another user's message, applied by the real writes."""
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": body}
        [result] = self.service.push(sender, "laptop", [op])
        assert result.status == "applied", result

    @property
    def head(self) -> int:
        return self.storage.head

    @property
    def pushes(self) -> int:
        """``POST /v1/ops`` requests that reached the server (answered or refused)."""
        return len([entry for entry in self.log if entry[2] == "/v1/ops"])

    def bodies(self) -> list[str]:
        return [m["body"] for cid in CONVERSATIONS for m in self.storage.all_messages(cid)]

    def truth(self) -> dict[str, tuple[str, int]]:
        return {
            m["message_id"]: (cid, m["seq"])
            for cid in CONVERSATIONS
            for m in self.storage.all_messages(cid)
        }


class Client:
    """The protocol and a store reduced to dictionaries, joined to a :class:`Server`."""

    def __init__(self, server: Server, *, batch: int = 10, page: int = 4) -> None:
        self.server = server
        self.protocol = SyncProtocol(push_batch=batch, page_limit=page, rng=lambda: 1.0)
        self.outbox: dict[str, list[Any]] = {}  # op id -> [item, state, due at]
        self.messages: dict[str, tuple[str, int]] = {}  # message id -> (conversation, seq)
        self.stored_cursor = 0
        self.emitted: list[ServerEvent | Discontinuity] = []
        # Faults on the link: called with the request's name; may raise or return a mangler
        # of the decoded answer (the server has done the work by then).
        self.fault: Callable[[str], Callable[[Any], Any] | None] = lambda _kind: None
        self.gate = RetryAfterGate()  # the transport's: see RestTransport._request

    # --- the app ------------------------------------------------------------------------

    def send(
        self,
        n: int,
        cid: str = CONVERSATIONS[0],
        body: str | None = None,
        op_id: str | None = None,
    ) -> str:
        """Queue a send as the outbox would hold it (validation is the caller's business:
        a poison op is one that got in by another way, such as an older version's queue)."""
        op_id = op_id or f"op-{len(self.outbox) + 1}"
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

    def list_conversations(self, now: float) -> None:
        """Another REST request of the app (it draws from the same rate budget)."""
        self.server.clock.now = now
        self.server.handle(requests.conversations())

    # --- the driver: moves data only ----------------------------------------------------

    def push_all(self, now: float) -> None:
        self.server.clock.now = now
        while items := self._claim(now):
            push = self.protocol.push_round(items)
            while (batch := push.next_batch()) is not None:
                body = self.protocol.push_request(batch)
                try:
                    results = self._link(
                        "push", requests.push(body["ops"]), codec.decode_op_results
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
            query = self.protocol.pull_request()
            request = requests.pull(query["since"], query["limit"])
            try:
                page = self._link("pull", request, codec.decode_page)
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
                assert ev.seq is not None  # protocol v1: every durable event has its seq
                self.messages[ev.message_id] = (ev.conversation_id, ev.seq)
        assert isinstance(cursor, int) and cursor >= self.stored_cursor, "cursor moved back"
        self.stored_cursor = cursor
        self.emitted += self.protocol.receive_applied(page.events, listening=True)

    def _resync(self) -> None:
        plan = self.protocol.start_resync()
        while (request := plan.next_request()) is not None:
            if isinstance(request, ConversationsSnapshot):
                snapshot = decode_conversations(self.server.handle(requests.conversations()))
                assert isinstance(snapshot.head, int)  # protocol v1: an integer position
                plan.receive_snapshot([c.as_dict() for c in snapshot.conversations], snapshot.head)
                continue
            ask = requests.history(request.conversation_id, request.before, request.limit)
            writes = plan.receive_history(codec.decode_history(self.server.handle(ask)))
            for m in writes.messages:
                self.messages[m.message_id] = (m.conversation_id, m.seq)
        self.stored_cursor = plan.new_cursor()
        known = {cid: seq for cid, seq in self.messages.values()}
        self.emitted.append(self.protocol.resynced(self.stored_cursor, known))

    def _link(self, kind: str, request: requests.Request, decode: Callable[[bytes], Any]) -> Any:
        """One request through the transport: its Retry-After gate, the server, the faults."""
        now = self.server.clock.now
        wait = self.gate.wait(now)
        if wait > 0:  # as RestTransport: nothing is sent before the server's Retry-After
            raise RateLimited("waiting out the server's Retry-After", retry_after=wait)
        mangle = self.fault(kind)
        try:
            answer = decode(self.server.handle(request))
        except RateLimited as exc:
            if exc.retry_after:
                self.gate.hold(now, exc.retry_after)
            raise
        return mangle(answer) if mangle is not None else answer

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


def converged(client: Client, server: Server) -> bool:
    return client.messages == server.truth()


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
    assert sorted(server.bodies()) == [f"hello {n}" for n in range(5)]  # each once
    # The replays were answered from the op records, not applied again:
    assert server.storage.op_result(USER, DEVICE, "op-1") is not None
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
    client.fault = lambda kind: lose_answer
    client.push_all(NOW)  # no exception: the live link stays up
    [(_item, state, due)] = client.outbox.values()
    assert state is OutboxState.PENDING and due == NOW + 0.5
    assert server.bodies() == ["hello 1"]  # the server applied it; only the answer was lost
    client.fault = lambda kind: None
    client.push_all(NOW + 0.1)
    assert server.pushes == 1  # not due yet
    client.push_all(NOW + 0.5)
    assert client.states() == {"op-1": OutboxState.SENT}
    assert server.bodies() == ["hello 1"]  # the replay was a duplicate
    assert server.pushes == 2


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
    # Two creations and six messages fit in the retained log; nine more push the client's
    # cursor out of it.
    server = Server(retention=8)
    client = Client(server, page=4)
    for n in range(6):
        server.message(CONVERSATIONS[0], OTHER, f"early {n}")
    client.catch_up()
    old = client.stored_cursor
    assert (old, server.storage.oldest_pos) == (8, 1)
    for n in range(9):
        server.message(CONVERSATIONS[n % 2], OTHER, f"while away {n}")
    assert server.storage.oldest_pos > old + 1  # retention dropped what the client missed
    client.catch_up()
    assert ("GET", "/v1/events", 410) in [entry[1:] for entry in server.log]
    [disc] = [e for e in client.emitted if isinstance(e, Discontinuity)]
    assert disc == Discontinuity(old_cursor=old, new_cursor=server.head)
    assert client.protocol.cursor == client.stored_cursor == server.head
    assert converged(client, server)
    server.message(CONVERSATIONS[1], OTHER, "after")
    client.catch_up()
    assert converged(client, server) and durable_emitted_once(client)
    assert len([e for e in client.emitted if isinstance(e, Discontinuity)]) == 1


def test_a_poison_op_is_isolated_and_the_rest_flow() -> None:
    """One operation the server's envelope check refuses (an op id it cannot name in a
    result) gets the whole request refused: the client bisects down to it."""
    server = Server()
    client = Client(server, batch=8)
    ids = [client.send(n) for n in range(7)]
    bad = client.send(99, op_id=BAD_OP_ID)
    ids += [client.send(n) for n in range(7, 9)]
    client.push_all(NOW)
    states = client.states()
    assert states.pop(bad) is OutboxState.FAILED
    assert set(states.values()) == {OutboxState.SENT}
    assert sorted(server.bodies()) == sorted(f"hello {n}" for n in range(9))
    assert ("POST", "/v1/ops", 422) in [entry[1:] for entry in server.log]
    # log2 requests per level of the bisection, not one per op:
    assert server.pushes <= 1 + 2 * 3 + 1
    client.catch_up()
    assert converged(client, server)


def test_an_invalid_op_fails_alone_in_one_request() -> None:
    """An operation the protocol's validation refuses (queued by another way, such as an
    older version's outbox) is refused by the server's own parsing, for that operation
    only: one request, the culprit FAILED, the others applied."""
    server = Server()
    client = Client(server, batch=8)
    too_long = "x" * (ops.MAX_BODY_CHARS + 1)
    with pytest.raises(UsageError):  # the client would not have queued it itself
        ops.validate_op(OpKind.SEND, CONVERSATIONS[0], {"body": too_long})
    for n in range(3):
        client.send(n)
    bad = client.send(99, body=too_long)
    for n in range(3, 6):
        client.send(n)
    client.push_all(NOW)
    states = client.states()
    assert states.pop(bad) is OutboxState.FAILED
    assert set(states.values()) == {OutboxState.SENT}
    assert server.pushes == 1
    assert sorted(server.bodies()) == sorted(f"hello {n}" for n in range(6))
    recorded = server.storage.op_result(USER, DEVICE, bad)
    assert recorded is not None and (recorded["status"], recorded["code"]) == (
        "rejected",
        "too_large",
    )


def test_429_waits_for_retry_after() -> None:
    # One request per 8 s, one in reserve: the second request at once is refused.
    server = Server(rate_per_s=0.125, rate_burst=1)
    client = Client(server, batch=4)
    client.list_conversations(NOW)
    for n in range(4):
        client.send(n)
    client.push_all(NOW)
    assert server.log[-1] == (NOW, "POST", "/v1/ops", 429)
    assert set(client.states().values()) == {OutboxState.PENDING}
    assert {row[2] for row in client.outbox.values()} == {NOW + 8.0}  # the bucket's figure
    client.push_all(NOW + 7.9)
    assert set(client.states().values()) == {OutboxState.PENDING}  # not before Retry-After
    assert server.pushes == 1  # nothing was sent before it
    assert not [entry for entry in server.log if NOW < entry[0] < NOW + 8.0]
    client.push_all(NOW + 8.0)
    assert set(client.states().values()) == {OutboxState.SENT}
    assert len(server.bodies()) == 4 and server.pushes == 2


def test_429_in_a_bisected_request_defers_the_other_half() -> None:
    # One request per 8 s, five in reserve (the whole bisection below), four of them spent
    # by the app a moment before.
    server = Server(rate_per_s=0.125, rate_burst=5)
    client = Client(server, batch=4)
    for _ in range(4):
        client.list_conversations(NOW)
    for n in range(3):
        client.send(n)
    client.send(3, op_id=BAD_OP_ID)
    client.push_all(NOW)  # the whole request is refused, then the first half gets 429
    assert [entry[3] for entry in server.log[-2:]] == [422, 429]
    due = {op: row[2] for op, row in client.outbox.items()}
    assert due == {"op-1": NOW + 8.0, "op-2": NOW + 8.0, "op-3": NOW, BAD_OP_ID: NOW}
    assert set(client.states().values()) == {OutboxState.PENDING}
    client.push_all(NOW + 7.9)
    assert server.pushes == 2  # nothing before the Retry-After of the first half
    # Later, with the bucket full again (the bisection takes five requests):
    client.push_all(NOW + 8.0 * 5)
    assert client.states() == {
        "op-1": OutboxState.SENT,
        "op-2": OutboxState.SENT,
        "op-3": OutboxState.SENT,
        BAD_OP_ID: OutboxState.FAILED,
    }
    # The next round starts from the half the bisection had reached (op-1, op-2), not from
    # the whole refused batch again: one request, then op-3 and the culprit split (three).
    assert server.pushes == 2 + 4


def test_a_bisection_under_a_sustained_rate_limit_makes_progress() -> None:
    server = Server(rate_per_s=0.125, rate_burst=2)
    client = Client(server, batch=4)
    client.list_conversations(NOW)
    for n in range(3):
        client.send(n)
    client.send(3, op_id=BAD_OP_ID)
    now = NOW
    for _ in range(20):  # each round as soon as the server's Retry-After has passed
        client.push_all(now)
        due = [row[2] for row in client.outbox.values() if row[1] is OutboxState.PENDING]
        if not due:
            break
        now = max(due)  # the transport's gate holds every request until then
    assert client.states()["op-1"] is OutboxState.SENT


# --- a random interleaving ----------------------------------------------------------------

_STEPS = st.lists(
    st.sampled_from(["send", "other", "push", "push_lost", "pull", "pull_shuffled", "later"]),
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(steps=_STEPS, seed=st.integers(0, 2**16))
def test_any_interleaving_converges_without_loss_or_duplicates(steps: list[str], seed: int) -> None:
    """Sends, other users' messages, pushes whose answer may be lost, pulls whose pages may
    come back shuffled and again, in any order: once the link heals, every op is applied
    exactly once and the client holds the server's messages, each event emitted once."""
    server = Server(retention=12)
    client = Client(server, batch=3, page=3)
    rng = random.Random(seed)
    now = NOW
    late: list[EventPage] = []

    def shuffled(page: EventPage) -> EventPage:
        late.append(page)
        events = list(page.events)
        rng.shuffle(events)
        return EventPage(events=tuple(events), next=page.next, has_more=page.has_more)

    for n, step in enumerate(steps):
        if step == "send":
            client.send(n, cid=CONVERSATIONS[n % 2])
        elif step == "other":
            server.message(CONVERSATIONS[n % 2], OTHER, f"bob {n}")
        elif step == "later":
            now += 1.0
        elif step.startswith("push"):
            client.fault = (lambda kind: lose_answer) if step == "push_lost" else lambda k: None
            try:
                client.push_all(now)
            except ServerUnavailable:
                pass
        else:
            client.fault = (lambda kind: shuffled) if step == "pull_shuffled" else lambda k: None
            client.catch_up()
            if late:
                page = late.pop(rng.randrange(len(late)))  # an old answer arrives again
                client.apply(page)
                client.protocol.receive_page(page)
    client.fault = lambda kind: None
    while any(state is not OutboxState.SENT for state in client.states().values()):
        now += 60.0
        client.push_all(now)
    client.catch_up()
    sent = [row[0].payload["body"] for row in client.outbox.values()]
    mine = [body for body in server.bodies() if body.startswith("hello")]
    assert sorted(mine) == sorted(sent)  # each op applied exactly once
    assert converged(client, server)
    assert durable_emitted_once(client)
    assert client.protocol.cursor == client.stored_cursor == server.head
