"""The sans-I/O core, driven with recorded responses only: no sockets, no SQLite, no clock."""

from __future__ import annotations

import pytest

from syncengine.core.policy import Disposition, RetryPolicy, classify, classify_status, full_jitter
from syncengine.core.sync import (
    CONNECTION_TRANSITIONS,
    OUTBOX_TRANSITIONS,
    SyncCore,
    mermaid,
    op_to_wire,
)
from syncengine.core.typing import TypingThrottle
from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    RateLimited,
    Rejected,
    ServerUnavailable,
    TLSVerificationFailed,
    UsageError,
)
from syncengine.events import MessageReceived
from syncengine.models import ConnectionState as CS
from syncengine.models import OpKind, OutboxItem, OutboxState
from syncengine.wire import EventPage, OpResult


def msg(pos: int, seq: int, cid: str = "c1") -> MessageReceived:
    return MessageReceived(
        pos=pos, conversation_id=cid, seq=seq, ts_ms=1, message_id=f"m{pos}", sender="bob", body="x"
    )


def item(op_id: str, kind: OpKind = OpKind.SEND, cid: str = "c1") -> OutboxItem:
    return OutboxItem(
        op_id=op_id,
        kind=kind,
        conversation_id=cid,
        payload={"body": "hi"},
        state=OutboxState.SENDING,
    )


# --- policy -----------------------------------------------------------------------------------


def test_full_jitter_is_bounded_by_the_cap_and_spans_zero_to_ceiling() -> None:
    assert full_jitter(0, base=0.5, cap=30, rng=lambda: 1.0) == 0.5
    assert full_jitter(3, base=0.5, cap=30, rng=lambda: 1.0) == 4.0
    # After the cap the ceiling stays at the cap, and the jitter still spreads clients over
    # [0, cap]: jitter is applied after the cap, so clients that reached it do not reconnect
    # in step.
    assert full_jitter(20, base=0.5, cap=30, rng=lambda: 1.0) == 30.0
    assert full_jitter(20, base=0.5, cap=30, rng=lambda: 0.25) == 7.5
    assert full_jitter(10_000, base=0.5, cap=30, rng=lambda: 0.5) == 15.0


@pytest.mark.parametrize(
    ("status", "disposition"),
    [
        (401, Disposition.LOGIN),
        (410, Disposition.RESYNC),
        (429, Disposition.RETRY),
        (500, Disposition.RETRY),
        (503, Disposition.RETRY),
        (400, Disposition.FAIL_OP),
        (403, Disposition.FAIL_OP),
        (404, Disposition.FAIL_OP),
        (413, Disposition.FAIL_OP),
        (422, Disposition.FAIL_OP),
    ],
)
def test_statuses_are_classified(status: int, disposition: Disposition) -> None:
    assert classify_status(status) is disposition


def test_exceptions_are_classified() -> None:
    assert classify(ServerUnavailable("down")) is Disposition.RETRY
    assert classify(RateLimited("slow", retry_after=2)) is Disposition.RETRY
    assert classify(AuthFailed("no")) is Disposition.LOGIN
    assert classify(CursorExpired("old")) is Disposition.RESYNC
    assert classify(TLSVerificationFailed("bad cert")) is Disposition.STOP
    assert classify(Rejected("too_large", "big", status=413)) is Disposition.FAIL_OP
    assert classify(ValueError("bug")) is Disposition.STOP


def test_retry_policy_honours_retry_after_and_resets() -> None:
    seen: list[float] = []
    policy = RetryPolicy(base=1, cap=8, rng=lambda: 1.0, on_backoff=lambda e, d: seen.append(d))
    assert policy(ServerUnavailable("x")) == 1
    assert policy(ServerUnavailable("x")) == 2
    assert policy(RateLimited("x", retry_after=30)) == 30  # Retry-After wins over backoff
    assert policy(AuthFailed("x")) is False  # not retried: stamina re-raises
    assert seen == [1, 2, 30]
    policy.reset()
    assert policy(ServerUnavailable("x")) == 1


# --- state tables -----------------------------------------------------------------------------


def test_connection_transitions_follow_the_table() -> None:
    core = SyncCore()
    assert core.state is CS.OFFLINE
    change = core.transition(CS.CONNECTING)
    assert change is not None and change.old is CS.OFFLINE and change.new is CS.CONNECTING
    assert core.transition(CS.CONNECTING) is None  # no event when nothing changes
    with pytest.raises(UsageError):
        core.transition(CS.LIVE)  # CONNECTING -> LIVE skips SYNCING: not in the table
    assert core.state is CS.CONNECTING


def test_every_state_is_reachable_and_diagrams_are_generated() -> None:
    reachable = {CS.OFFLINE} | {new for (_, new) in CONNECTION_TRANSITIONS}
    assert reachable == set(CS)
    assert set(OutboxState) == {s for pair in OUTBOX_TRANSITIONS for s in pair}
    text = mermaid(CONNECTION_TRANSITIONS)
    assert text.startswith("stateDiagram-v2")
    assert "SYNCING --> LIVE" in text


# --- push -------------------------------------------------------------------------------------


def test_push_results_are_sorted_into_sent_failed_and_retry() -> None:
    core = SyncCore()
    items = [item("a"), item("b"), item("c"), item("d"), item("e")]
    assert core.push_request(items)["ops"][0] == {
        "op_id": "a",
        "kind": "send",
        "conversation_id": "c1",
        "body": "hi",
    }
    results = [
        OpResult(op_id="a", status="applied", message_id="m1", seq=1, pos=1),
        OpResult(op_id="b", status="duplicate", message_id="m2", seq=2, pos=2),
        OpResult(op_id="c", status="rejected", code="not_found", reason="no", status_code=404),
        OpResult(op_id="d", status="rejected", code="rate_limited", reason="x", status_code=429),
        # "e" has no result at all: it must be retried, never assumed sent.
    ]
    out = core.receive_push_results(items, results)
    assert [r.op_id for r in out.sent] == ["a", "b"]
    assert out.failed == [("c", "not_found", "no")]
    assert out.retry == ["d", "e"]


def test_op_to_wire_flattens_payload() -> None:
    it = OutboxItem(
        op_id="o",
        kind=OpKind.MARK_READ,
        conversation_id="c",
        payload={"seq": 4},
        state=OutboxState.PENDING,
    )
    assert op_to_wire(it) == {"op_id": "o", "kind": "mark_read", "conversation_id": "c", "seq": 4}


# --- pull and live ----------------------------------------------------------------------------


def test_pages_advance_the_cursor_and_never_move_it_back() -> None:
    core = SyncCore(cursor=10)
    assert core.pull_request() == {"since": 10, "limit": 500}
    assert core.receive_page(EventPage(events=(msg(11, 1),), next=11, has_more=True)) is False
    assert core.cursor == 11
    assert core.receive_page(EventPage(events=(), next=5, has_more=False)) is True
    assert core.cursor == 11


def test_live_events_move_the_cursor_only_after_catch_up() -> None:
    core = SyncCore(cursor=0)
    core.receive_ready(head=5)
    # Before the pull caught up, a live event proves nothing about what came before it.
    assert core.receive_live(msg(6, 1)).cursor is None
    core.receive_page(EventPage(events=(msg(6, 1),), next=6, has_more=False))
    assert core.caught_up
    d = core.receive_live(msg(7, 2))
    assert d.cursor == 7 and not d.gap
    # A duplicate (already below the cursor) changes nothing.
    assert core.receive_live(msg(7, 2)).cursor is None


def test_a_seq_jump_is_a_gap_that_stops_cursor_advance() -> None:
    core = SyncCore(cursor=0, known_seq={"c1": 3})
    core.receive_ready(head=0)
    core.receive_page(EventPage(events=(), next=0, has_more=False))
    d = core.receive_live(msg(9, 5))  # seq 4 is missing
    assert d.gap and d.cursor is None
    assert core.gaps == {"c1"} and not core.caught_up
    # The next live event must not move the cursor past the hole either.
    assert core.receive_live(msg(10, 6)).cursor is None
    core.receive_page(EventPage(events=(msg(8, 4),), next=10, has_more=False))
    assert core.gaps == set() and core.cursor == 10


def test_an_unknown_conversation_is_not_a_gap() -> None:
    core = SyncCore()
    core.receive_ready(head=0)
    assert core.receive_live(msg(1, 17, cid="new")).gap is False


def test_connection_lost_forgets_live_contiguity() -> None:
    core = SyncCore()
    core.receive_ready(head=0)
    core.receive_page(EventPage(events=(), next=0, has_more=False))
    core.connection_lost()
    assert core.receive_live(msg(1, 1)).cursor is None


def test_polling_mode_never_claims_live_contiguity() -> None:
    core = SyncCore()
    core.receive_page(EventPage(events=(), next=3, has_more=False))
    assert not core.caught_up  # no live head: there is no live stream to follow


# --- typing -----------------------------------------------------------------------------------


def test_typing_throttle_refreshes_and_stops_when_idle() -> None:
    t = TypingThrottle(refresh_s=3, idle_s=5)
    assert t.update("c", True, now=0.0) is True
    assert t.update("c", True, now=1.0) is None  # throttled
    assert t.tick(now=2.0) == []
    assert t.update("c", True, now=3.5) is True  # refresh after 3 s
    assert t.tick(now=6.6) == [("c", True)]  # still typing (last key 3.5): refresh
    assert t.tick(now=8.6) == [("c", False)]  # idle for 5 s: stop
    assert t.active() == []
    assert t.update("c", False, now=9.0) is None  # nothing to stop


def test_explicit_stop_sends_false_once() -> None:
    t = TypingThrottle()
    t.update("c", True, now=0)
    assert t.update("c", False, now=1) is False
    assert t.update("c", False, now=2) is None


def test_a_live_decision_moves_the_pull_cursor_only_once_committed() -> None:
    # G3: a pull that runs while a live batch waits for its commit must not start from (and
    # persist) a position past events that may never be stored.
    core = SyncCore(cursor=0)
    core.receive_ready(head=0)
    core.receive_page(EventPage(events=(), next=5, has_more=False))
    d = core.receive_live(msg(6, 1))
    assert d.cursor == 6
    assert core.pull_request()["since"] == 5  # not yet committed
    assert core.receive_live(msg(6, 1)).cursor is None  # decided once, even uncommitted
    core.committed(6)
    assert core.pull_request()["since"] == 6
    core.committed(3)  # never backwards
    assert core.cursor == 6
