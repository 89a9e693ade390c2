"""G4 as a property: any order, any repetition and any paging of the same events (and of the
acks of our own sends) leaves the same observable state, and that state is the one an
independent model of the event history predicts. Plus a stateful test of the outbox's
per-conversation FIFO rule: an item waiting for its retry holds back its own conversation
only, and a FAILED item holds back nothing, so one bad operation never stalls the outbox."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from syncengine.events import (
    ConversationUpdated,
    DurableEvent,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
)
from syncengine.models import Conversation, Message, MessageState, OutboxState
from syncengine.store import Store
from syncengine.store.store import SENDING_LEASE_S
from syncengine.wire import OpResult
from tests.helpers_store import ME, Clock, open_store, snapshot

USERS = (ME, "bob", "carol")
TITLES = ("plans", "lunch", "")
BODIES = st.text(alphabet="abxyz é😀", min_size=1, max_size=6).filter(lambda s: s.strip())


@attrs.define
class History:
    """What the server did, as this user sees it."""

    creations: list[ConversationUpdated]  # applied before the local echoes are queued
    events: list[DurableEvent]  # every visible durable event, in pos order
    echoes: list[tuple[str, str, str]]  # (conversation, op_id, body) queued here, in order
    acks: list[OpResult]  # the server's result for each echo


@st.composite
def histories(draw: st.DrawFn) -> History:
    cids = [f"c{i}" for i in range(draw(st.integers(1, 3)))]
    seq = dict.fromkeys(cids, 0)
    members: dict[str, frozenset[str]] = {}
    live: dict[str, list[tuple[str, str]]] = {c: [] for c in cids}  # (message id, sender)
    pos = 0
    creations: list[ConversationUpdated] = []
    events: list[DurableEvent] = []
    echoes: list[tuple[str, str, str]] = []
    acks: list[OpResult] = []

    def next_pos() -> int:
        nonlocal pos
        pos += draw(st.integers(1, 3))  # other users' events leave holes
        return pos

    for c in cids:
        seq[c] = 1
        members[c] = frozenset(draw(st.sets(st.sampled_from(USERS))) | {ME})
        ev = ConversationUpdated(
            pos=next_pos(),
            conversation_id=c,
            seq=1,
            ts_ms=1_000,
            title=draw(st.sampled_from(TITLES)),
            members=tuple(sorted(members[c])),
            actor=ME,
        )
        creations.append(ev)
        events.append(ev)

    for _ in range(draw(st.integers(0, 30))):
        c = draw(st.sampled_from(cids))
        seq[c] += 1
        s, p, ts = seq[c], next_pos(), 1_000 * seq[c] + 7
        visible = ME in members[c]
        kind = draw(st.sampled_from(["msg", "msg", "msg", "edit", "delete", "conv", "read"]))
        if kind in ("edit", "delete") and not live[c]:
            kind = "msg"
        ev: DurableEvent
        if kind == "msg":
            sender = draw(st.sampled_from(USERS))
            body = draw(BODIES)
            mid = f"{c}-m{s}"
            op_id: str | None = f"op-{c}-{s}"
            if sender == ME and visible and draw(st.booleans()):
                echoes.append((c, op_id, body))  # sent from this device: a local echo
                acks.append(
                    OpResult(
                        op_id=op_id,
                        status="applied",
                        conversation_id=c,
                        message_id=mid,
                        seq=s,
                        pos=p,
                        ts_ms=ts,
                    )
                )
            elif draw(st.booleans()):
                op_id = None  # e.g. a bot posting without op ids
            ev = MessageReceived(
                pos=p,
                conversation_id=c,
                seq=s,
                ts_ms=ts,
                message_id=mid,
                op_id=op_id,
                sender=sender,
                body=body,
            )
            live[c].append((mid, sender))
        elif kind == "edit":
            mid, sender = draw(st.sampled_from(live[c]))
            ev = MessageUpdated(
                pos=p,
                conversation_id=c,
                seq=s,
                ts_ms=ts,
                message_id=mid,
                body=draw(BODIES),
                editor=sender,
            )
        elif kind == "delete":
            mid, sender = draw(st.sampled_from(live[c]))
            live[c].remove((mid, sender))
            ev = MessageDeleted(
                pos=p, conversation_id=c, seq=s, ts_ms=ts, message_id=mid, deleted_by=sender
            )
        elif kind == "conv":
            new = frozenset(draw(st.sets(st.sampled_from(USERS), min_size=1)))
            visible = visible or ME in new  # the update that adds me reaches me
            members[c] = new
            ev = ConversationUpdated(
                pos=p,
                conversation_id=c,
                seq=s,
                ts_ms=ts,
                title=draw(st.sampled_from(TITLES)),
                members=tuple(sorted(new)),
                actor="bob",
            )
        else:
            ev = ReadReceipt(
                pos=p,
                conversation_id=c,
                seq=s,
                ts_ms=ts,
                user=draw(st.sampled_from(USERS)),
                read_seq=draw(st.integers(0, s - 1)),
            )
        if visible:
            events.append(ev)
    return History(creations=creations, events=events, echoes=echoes, acks=acks)


def model(h: History) -> dict[str, Any]:
    """The state the events describe, computed without the store."""
    cids = sorted({e.conversation_id for e in h.events})
    convs: list[Conversation] = []
    messages: dict[str, list[Message]] = {}
    for c in cids:
        evs = [e for e in h.events if e.conversation_id == c]
        meta = max((e for e in evs if isinstance(e, ConversationUpdated)), key=lambda e: e.seq)
        gone = {e.message_id for e in evs if isinstance(e, MessageDeleted)}
        last_edit: dict[str, MessageUpdated] = {}
        for e in sorted((e for e in evs if isinstance(e, MessageUpdated)), key=lambda e: e.seq):
            last_edit[e.message_id] = e
        others_read: dict[str, int] = {}
        for e in evs:
            if isinstance(e, ReadReceipt) and e.user != ME and e.read_seq is not None:
                others_read[e.user] = max(others_read.get(e.user, 0), e.read_seq)
        msgs = []
        for m in sorted((e for e in evs if isinstance(e, MessageReceived)), key=lambda e: e.seq):
            edit = last_edit.get(m.message_id)
            body = edit.body if edit else m.body
            msgs.append(
                Message(
                    conversation_id=c,
                    op_id=m.op_id,
                    id=m.message_id,
                    seq=m.seq,
                    sender=m.sender,
                    body="" if m.message_id in gone else body,
                    state=MessageState.SENT,
                    created_at=m.ts_ms / 1000,
                    edited_at=edit.ts_ms / 1000 if edit else None,
                    deleted=m.message_id in gone,
                    # one's own messages carry who has read them (issue 18)
                    read_by=tuple(
                        sorted(u for u, seq in others_read.items() if seq >= m.seq)
                    )
                    if m.sender == ME
                    else (),
                )
            )
        messages[c] = msgs
        read_seq = max(
            (e.read_seq for e in evs if isinstance(e, ReadReceipt) and e.user == ME), default=0
        )
        if ME in meta.members:
            convs.append(
                Conversation(
                    id=c,
                    title=meta.title,
                    members=tuple(sorted(meta.members)),
                    last_seq=max(e.seq for e in evs),
                    read_seq=read_seq,
                    unread=sum(
                        1 for m in msgs if m.seq > read_seq and m.sender != ME and not m.deleted
                    ),
                )
            )
    convs.sort(key=lambda conv: (-conv.last_seq, conv.id))  # newest activity first
    return {
        "conversations": convs,
        "messages": messages,
        "outbox": [(op_id, OutboxState.SENT) for _, op_id, _ in h.echoes],
        "cursor": max(e.pos for e in h.events),
    }


Item = tuple[str, Any]  # ("event", DurableEvent) or ("ack", OpResult)


@attrs.define
class Scratch:
    """A folder for the stores of one example (function-scoped fixtures and @given differ in
    lifetime, so each example makes its own)."""

    root: Path
    n: int = 0

    def new_store(self, h: History) -> Store:
        self.n += 1
        store = open_store(self.root / f"s{self.n}.db", clock=Clock())
        store.apply_events(h.creations)
        for c, op_id, body in h.echoes:
            store.enqueue("send", c, {"body": body}, op_id=op_id)
        return store


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    with tempfile.TemporaryDirectory() as root:
        yield Scratch(Path(root))


def apply_pages(store: Store, pages: list[list[Item]]) -> None:
    for page in pages:
        batch: list[DurableEvent] = []
        for kind, item in [*page, ("flush", None)]:
            if kind == "event":
                batch.append(item)
                continue
            if batch:  # one transaction per run of events, with its cursor
                store.apply_events(batch, cursor=max(e.pos for e in batch))
                batch = []
            if kind == "ack":
                store.mark_sent(item)


def state(store: Store, h: History) -> dict[str, Any]:
    return snapshot(store, {e.conversation_id for e in h.events})


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(h=histories(), data=st.data())
def test_any_order_repetition_and_paging_reach_the_same_state(
    scratch: Scratch, h: History, data: st.DataObject
) -> None:
    expected = model(h)
    items: list[Item] = [("event", e) for e in h.events] + [("ack", a) for a in h.acks]

    # The canonical delivery: every event once, in order, in one page; then the acks.
    with scratch.new_store(h) as store:
        apply_pages(store, [items])
        assert state(store, h) == expected

    for variant in range(2):
        # Acks may be lost (the event alone must then confirm the send), never events.
        lost = data.draw(st.sets(st.sampled_from(h.acks)) if h.acks else st.just(set()))
        kept = [it for it in items if it[0] == "event" or it[1] not in lost]
        order = list(data.draw(st.permutations(kept), label=f"order {variant}"))
        for src, at in data.draw(
            st.lists(st.tuples(st.integers(0, len(kept) - 1), st.integers(0, len(kept)))),
            label=f"duplicates {variant}",
        ):
            order.insert(at, order[src])
        cuts = sorted(data.draw(st.sets(st.integers(1, len(order))), label=f"cuts {variant}"))
        pages = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
        note(f"variant {variant}: {len(order)} items in {len(pages)} pages")
        with scratch.new_store(h) as store:
            apply_pages(store, pages)
            assert state(store, h) == expected


# --- the same in small, named cases ---------------------------------------------------------


_fresh = itertools.count()


def _one(events: list[DurableEvent], tmp_path: Path) -> list[Message]:
    """Apply each event in its own transaction to a fresh store; the messages of "c"."""
    with open_store(tmp_path / f"{next(_fresh)}.db") as store:
        for ev in events:
            store.apply_events([ev])
        return store.messages("c")


def test_edit_before_message_and_older_edit_after_newer(tmp_path: Path) -> None:
    msg = MessageReceived(
        pos=1, conversation_id="c", seq=1, ts_ms=1, message_id="m", sender="bob", body="a"
    )
    e2 = MessageUpdated(
        pos=2, conversation_id="c", seq=2, ts_ms=2, message_id="m", body="b", editor="bob"
    )
    e3 = MessageUpdated(
        pos=3, conversation_id="c", seq=3, ts_ms=3, message_id="m", body="c", editor="bob"
    )
    dele = MessageDeleted(
        pos=4, conversation_id="c", seq=4, ts_ms=4, message_id="m", deleted_by="bob"
    )
    assert [m.body for m in _one([e3, e2, msg], tmp_path)] == ["c"]
    assert [m.body for m in _one([e2, msg, e3, e2], tmp_path)] == ["c"]
    assert _one([dele, msg, e3], tmp_path) == _one([msg, e2, e3, dele], tmp_path)
    assert _one([dele, msg], tmp_path)[0].deleted


# --- the outbox: per-conversation FIFO under every mix of outcomes --------------------------


class OutboxMachine(RuleBasedStateMachine):
    """Drives enqueue / claim / ack / fail / retry / requeue / crash, and checks each claim
    against the rule: an item goes out only when every earlier item of its conversation is
    SENT or FAILED or goes out before it in the same claim; and everything ready goes out."""

    CONVS = ("a", "b", "c")

    @initialize()
    def start(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "outbox.db"
        self.clock = Clock()
        self.store = open_store(self.path, clock=self.clock)
        self.store.apply_events(
            [
                ConversationUpdated(
                    pos=i + 1,
                    conversation_id=c,
                    seq=1,
                    ts_ms=1,
                    title=c,
                    members=(ME,),
                    actor=ME,
                )
                for i, c in enumerate(self.CONVS)
            ]
        )
        # the model: op_id -> [conversation, state, not_before, claimed_at]
        self.items: dict[str, list[Any]] = {}
        self.seq = dict.fromkeys(self.CONVS, 1)

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            self.dir.cleanup()

    def _in(self, state: str) -> list[str]:
        return [op for op, it in self.items.items() if it[1] == state]

    @rule(c=st.sampled_from(CONVS))
    def enqueue(self, c: str) -> None:
        item, created = self.store.enqueue("send", c, {"body": f"m{len(self.items)}"})
        assert created
        self.items[item.op_id] = [c, "pending", None, None]

    @rule(limit=st.integers(1, 6))
    def claim(self, limit: int) -> None:
        now = self.clock.now
        got = [i.op_id for i in self.store.claim(limit)]
        expected: list[str] = []
        blocked: set[str] = set()
        for op, (c, st_, not_before, claimed_at) in self.items.items():  # insertion = n order
            if c in blocked or st_ in ("sent", "failed") or len(expected) >= limit:
                continue
            ready = (st_ == "pending" and (not_before is None or not_before <= now)) or (
                st_ == "sending" and claimed_at <= now - SENDING_LEASE_S
            )
            if ready:
                expected.append(op)
            else:
                blocked.add(c)
        assert got == expected
        for op in got:
            self.items[op][1:] = ["sending", self.items[op][2], now]

    @precondition(lambda self: self._in("sending"))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        op = data.draw(st.sampled_from(self._in("sending")))
        c = self.items[op][0]
        self.seq[c] += 1
        assert self.store.mark_sent(
            OpResult(
                op_id=op,
                status="applied",
                conversation_id=c,
                message_id=f"srv-{op}",
                seq=self.seq[c],
                ts_ms=1,
            )
        )
        self.items[op][1] = "sent"

    @precondition(lambda self: self._in("sending"))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        op = data.draw(st.sampled_from(self._in("sending")))
        assert self.store.mark_failed(op, "invalid", "refused")
        self.items[op][1] = "failed"

    @precondition(lambda self: self._in("sending"))
    @rule(data=st.data(), delay=st.sampled_from([0.0, 5.0, 30.0]))
    def retry_later(self, data: st.DataObject, delay: float) -> None:
        op = data.draw(st.sampled_from(self._in("sending")))
        self.store.mark_retry([op], "unavailable", self.clock.now + delay)
        self.items[op][1:3] = ["pending", self.clock.now + delay]

    @precondition(lambda self: self._in("failed"))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        op = data.draw(st.sampled_from(self._in("failed")))
        assert self.store.requeue([op]) == [op]
        self.items[op][1:3] = ["pending", None]

    @rule(seconds=st.sampled_from([1.0, 10.0, SENDING_LEASE_S]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(recover=st.booleans())
    def crash_and_restart(self, recover: bool) -> None:
        self.store.close()
        self.store = open_store(self.path, clock=self.clock)
        if recover:
            assert self.store.recover_sending() == len(self._in("sending"))
            for op in self._in("sending"):
                self.items[op][1] = "pending"

    @invariant()
    def outbox_matches_the_model(self) -> None:
        if not hasattr(self, "store"):
            return
        assert [(i.op_id, i.state.value) for i in self.store.outbox()] == [
            (op, it[1]) for op, it in self.items.items()
        ]
        h = self.store.health()
        assert (h.pending, h.sending, h.failed) == tuple(
            len(self._in(s)) for s in ("pending", "sending", "failed")
        )
        # every send still has exactly one row, echo or server copy
        assert self.store.message_count() == len(self.items)


OutboxMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_outbox_fifo = OutboxMachine.TestCase
