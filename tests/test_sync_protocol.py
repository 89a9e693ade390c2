"""Each decision of the sans-I/O sync protocol, with no server, no socket, no SQLite, no clock."""

from __future__ import annotations

import orjson

import itertools
from typing import Any

import pytest

from syncengine.core.backoff import Backoff
from syncengine.core.cursor import V1, TransportCapabilities, later
from syncengine.core.emit import EmitFilter
from syncengine.core.history import RESYNC_HISTORY_PAGE, backfill_request, history_page
from syncengine.core.push import MarkFailed, MarkRetry
from syncengine.core.requests import (
    CatchUp,
    ConnectLive,
    ConversationsSnapshot,
    HistoryRequest,
    PresenceSnapshot,
)
from syncengine.core.schedule import (
    OUTBOX_POLL_S,
    SyncSettings,
    default_live_retry_s,
    live_handshake_s,
)
from syncengine.core.sync import CONNECTION_TRANSITIONS, IllegalTransition, SyncProtocol
from syncengine.errors import (
    AuthFailed,
    RateLimited,
    Rejected,
    ServerUnavailable,
    UsageError,
)
from syncengine.events import (
    ConversationUpdated,
    Discontinuity,
    MessageReceived,
    TypingStarted,
)
from syncengine.models import ConnectionState as CS
from syncengine.models import Message, MessageState, OpKind, OutboxItem, OutboxState
from syncengine.wire import EventPage, HistoryMessage, HistoryPageWire, OpResult

NOW = 1_000.0


def msg(pos: int, seq: int, cid: str = "c1") -> MessageReceived:
    return MessageReceived(
        pos=pos, conversation_id=cid, seq=seq, ts_ms=1, message_id=f"m{pos}", sender="bob", body="x"
    )


def conv(pos: int, cid: str = "c1") -> ConversationUpdated:
    return ConversationUpdated(
        pos=pos, conversation_id=cid, seq=1, ts_ms=1, title="t", members=("a", "b"), actor="a"
    )


def item(op_id: str) -> OutboxItem:
    return OutboxItem(
        op_id=op_id,
        kind=OpKind.SEND,
        conversation_id="c1",
        payload={"body": "hi"},
        state=OutboxState.SENDING,
    )


def applied(op_id: str) -> OpResult:
    return OpResult(op_id=op_id, status="applied", message_id=f"m-{op_id}", seq=1, pos=1)


def live_protocol(**kw: object) -> SyncProtocol:
    """A protocol in LIVE over a live link, caught up."""
    p = SyncProtocol(rng=lambda: 1.0, **kw)  # type: ignore[arg-type]
    for state in (CS.CONNECTING, CS.SYNCING, CS.LIVE):
        p.transition(state)
    p.receive_ready(0)
    p.receive_page(EventPage(events=(), next=0, has_more=False))
    return p


# --- connection transitions: every move outside the table raises ---------------------------

FORBIDDEN = [
    (old, new)
    for old, new in itertools.product(CS, CS)
    if old is not new and (old, new) not in CONNECTION_TRANSITIONS
]


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=lambda s: s.name)
def test_a_forbidden_connection_transition_raises(old: CS, new: CS) -> None:
    p = SyncProtocol()
    p.state = old
    with pytest.raises(IllegalTransition) as info:
        p.transition(new, "asked for")
    assert (info.value.old, info.value.new) == (old, new)
    assert p.state is old  # refused, not forced


def test_illegal_transition_is_a_usage_error_and_the_table_is_not_empty() -> None:
    assert issubclass(IllegalTransition, UsageError)
    assert len(FORBIDDEN) == len(CS) * (len(CS) - 1) - len(CONNECTION_TRANSITIONS) > 0


@pytest.mark.parametrize(("old", "new"), list(CONNECTION_TRANSITIONS), ids=lambda s: s.name)
def test_every_allowed_transition_moves_and_reports(old: CS, new: CS) -> None:
    p = SyncProtocol()
    p.state = old
    change = p.transition(new)
    assert change is not None and (change.old, change.new) == (old, new)
    assert change.reason == CONNECTION_TRANSITIONS[(old, new)]


# --- cursor rules -----------------------------------------------------------------------------


def test_restore_takes_the_persisted_cursor_and_seqs() -> None:
    p = SyncProtocol(cursor=50, known_seq={"c1": 9})
    p.restore(40, {"c1": 7})  # a live batch that never committed moved it to 50 in memory
    assert p.pull_request() == {"since": 40, "limit": 500}
    assert p.known_seq == {"c1": 7}


def test_a_page_commits_with_a_cursor_that_never_goes_back() -> None:
    p = SyncProtocol(cursor=10)
    assert p.page_cursor(EventPage(events=(), next=15, has_more=False)) == 15
    assert p.page_cursor(EventPage(events=(), next=3, has_more=False)) == 10


def test_prefetch_asks_for_the_next_page_only_when_there_is_one() -> None:
    p = SyncProtocol(cursor=10, page_limit=2)
    assert p.prefetch_request(EventPage(events=(), next=12, has_more=True)) == {
        "since": 12,
        "limit": 2,
    }
    # A server that moves next backwards does not make us re-read from there.
    assert p.prefetch_request(EventPage(events=(), next=4, has_more=True)) == {
        "since": 10,
        "limit": 2,
    }
    assert p.prefetch_request(EventPage(events=(), next=12, has_more=False)) is None


def test_live_batch_decides_the_cursor_and_the_gap_in_one_go() -> None:
    p = live_protocol(known_seq={"c1": 1})
    assert p.receive_live_batch([msg(1, 2), msg(2, 3)]) == (2, False)
    assert p.cursor == 0  # moved only once committed
    p.committed(2)
    assert p.cursor == 2
    assert p.receive_live_batch([msg(4, 5)]) == (None, True)
    assert p.gaps == {"c1"}


# --- transport capabilities: the cursor is opaque ---------------------------------------------


def test_v1_capabilities_are_ordered_dense_and_server_assigned() -> None:
    assert TransportCapabilities(ordered_cursor=True, dense_seq=True, server_seq=True) == V1
    assert later(5, 3, V1) == 5 and later(3, 5, V1) == 5


def test_an_opaque_cursor_is_taken_as_the_server_hands_it_out() -> None:
    opaque = TransportCapabilities(ordered_cursor=False, dense_seq=False, server_seq=True)
    p = SyncProtocol(cursor="s72_1", capabilities=opaque)
    page = EventPage(events=(msg(1, 1),), next="s70_9", has_more=False)  # type: ignore[arg-type]
    assert p.page_cursor(page) == "s70_9"  # tokens do not compare: the newest is the cursor
    p.receive_ready("s70_9")
    assert p.receive_page(page) is True
    assert p.cursor == "s70_9"
    assert p.pull_request() == {"since": "s70_9", "limit": 500}
    # Live events never move an opaque cursor, and a seq jump is no gap without dense seqs.
    assert p.receive_live_batch([msg(10, 7)]) == (None, False)
    assert p.gaps == set()


def test_the_transport_reports_its_capabilities() -> None:
    p = SyncProtocol()
    opaque = TransportCapabilities(ordered_cursor=False)
    p.receive_capabilities(opaque)
    assert p.capabilities is opaque


# --- pull scheduling and live retry -----------------------------------------------------------


def test_live_retry_is_one_named_setting() -> None:
    assert default_live_retry_s(5.0) == 30.0  # never under 30 s
    assert default_live_retry_s(10.0) == 60.0  # six poll intervals
    assert SyncSettings(poll_interval_s=10.0).live_retry_s == 60.0
    assert SyncSettings(poll_interval_s=10.0, live_retry_s=5.0).live_retry_s == 5.0


def test_while_live_the_safety_pull_is_due_on_its_interval() -> None:
    p = live_protocol(settings=SyncSettings(safety_pull_s=30.0))
    p.reached_live(NOW)
    assert p.tick(NOW + 29.9) == []
    assert p.tick(NOW + 30.0) == [CatchUp()]
    p.receive_pull_done(NOW + 31.0)
    assert p.tick(NOW + 60.0) == []
    assert p.tick(NOW + 61.0) == [CatchUp()]


def test_while_polling_the_poll_interval_applies_and_live_is_retried_with_backoff() -> None:
    settings = SyncSettings(poll_interval_s=5.0, backoff_base_s=0.5, backoff_cap_s=30.0)
    p = SyncProtocol(settings=settings, rng=lambda: 1.0)  # the top of each jitter range
    p.live_try_started()  # the session's first handshake runs beside push and catch-up
    p.reached_live(NOW)  # no live link: polling
    assert p.tick(NOW + 5.0, want_live=True) == [CatchUp()]  # no second handshake meanwhile
    p.receive_pull_done(NOW + 5.0)
    assert p.live_retry_in(NOW + 5.0) is None
    waits = []
    now = NOW + 5.0
    for _ in range(8):
        waits.append(p.receive_live_failed(now))
        assert p.live_retry_in(now) == waits[-1]
        assert ConnectLive() not in p.tick(now + waits[-1] - 0.01, want_live=True)
        now += waits[-1]
        assert ConnectLive() in p.tick(now, want_live=True)
        assert ConnectLive() not in p.tick(now, want_live=True)  # one handshake at a time
    # Backoff, not a fixed wait: doubling from backoff_base_s up to the cap.
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    p.receive_live_failed(now)
    assert ConnectLive() not in p.tick(now + 100.0, want_live=False)  # the app said no live


def test_the_live_retry_wait_starts_short_again_once_the_channel_worked() -> None:
    p = SyncProtocol(settings=SyncSettings(backoff_base_s=0.5, backoff_cap_s=30.0), rng=lambda: 1.0)
    for _ in range(5):
        p.receive_live_failed(NOW)
    p.receive_ready(7)
    p.live_attached()
    assert p.receive_live_failed(NOW) == 0.5
    # The longest wait is capped by live_retry_s too (six poll intervals, at least 30 s).
    q = SyncProtocol(settings=SyncSettings(live_retry_s=2.0, backoff_cap_s=30.0), rng=lambda: 1.0)
    assert max(q.receive_live_failed(NOW) for _ in range(10)) == 2.0


def test_the_live_handshake_is_bounded_by_the_request_timeout() -> None:
    assert live_handshake_s(5.0) == 5.0
    assert live_handshake_s(0.1) == 1.0  # a loaded but healthy server is not given up on


def test_lag_is_the_distance_to_the_last_known_server_head() -> None:
    p = live_protocol(known_seq={"c1": 1})
    assert p.lag == 0  # nothing known of the head yet
    p.receive_ready(10)
    assert p.lag == 10  # the cursor is at 0
    p.receive_page(EventPage(events=(), next=10, has_more=False))
    assert p.lag == 0
    p.receive_live_batch([msg(14, 3)])  # seq 3 after 1: a gap, the cursor stays
    assert (p.lag, len(p.gaps)) == (4, 1)
    p.receive_page(EventPage(events=(), next=14, has_more=False))
    assert (p.lag, len(p.gaps)) == (0, 0)


def test_the_live_channel_back_makes_pulls_a_safety_net_again() -> None:
    p = SyncProtocol(settings=SyncSettings(poll_interval_s=5.0, safety_pull_s=30.0))
    p.reached_live(NOW)
    p.receive_ready(7)
    p.live_attached()
    p.receive_pull_done(NOW)
    assert p.tick(NOW + 10.0, want_live=True) == []  # no ConnectLive: the link is up
    assert p.tick(NOW + 30.0) == [CatchUp()]


def test_a_gap_or_a_bad_frame_pulls_at_once() -> None:
    p = live_protocol(known_seq={"c1": 1})
    p.reached_live(NOW)
    p.receive_live_batch([msg(5, 4)])
    assert p.tick(NOW + 0.1) == [CatchUp()]
    p.receive_page(EventPage(events=(), next=5, has_more=False))  # the gap is filled
    assert p.tick(NOW + 0.2) == []
    p.receive_bad_frame()
    assert p.tick(NOW + 0.3) == [CatchUp()]
    assert p.tick(NOW + 0.4) == []  # asked once


def test_a_failed_pull_while_live_blocks_urgent_pulls_until_the_retry() -> None:
    p = live_protocol(known_seq={"c1": 1})
    p.reached_live(NOW)
    p.receive_live_batch([msg(5, 4)])  # a gap: urgent
    assert p.receive_pull_failed(ServerUnavailable("down"), NOW) == 0.5  # rng pinned to 1.0
    assert p.tick(NOW + 0.4) == []  # a gap must not turn a failure into a busy loop
    assert p.tick(NOW + 0.5) == [CatchUp()]
    # A 429 while live: the server's Retry-After is honoured.
    assert p.receive_pull_failed(RateLimited("slow", retry_after=9.0), NOW) == 9.0


def test_next_wakeup_is_the_pull_timer_or_the_outbox_poll() -> None:
    p = live_protocol(settings=SyncSettings(safety_pull_s=30.0))
    p.reached_live(NOW)
    assert p.next_wakeup(NOW) == NOW + OUTBOX_POLL_S
    assert p.next_wakeup(NOW + 29.9) == pytest.approx(NOW + 30.0)
    assert p.next_wakeup(NOW + 40.0) == NOW + 40.0  # overdue: at once


# --- push: bisection and the Retry-After gate -------------------------------------------------


def test_a_refused_request_is_bisected_down_to_its_culprit() -> None:
    p = live_protocol()
    items = [item(x) for x in "abcd"]
    push = p.push_round(items)
    sent: list[str] = []
    failed: list[MarkFailed] = []
    requests: list[str] = []
    while (batch := push.next_batch()) is not None:
        ids = "".join(i.op_id for i in batch)
        requests.append(ids)
        if "c" in ids:  # the request carrying "c" is refused as a whole
            step = push.receive_error(Rejected("invalid", "bad op", status=422), NOW)
        else:
            step = push.receive_results([applied(i.op_id) for i in batch], NOW)
        sent += [r.op_id for r in step.sent]
        failed += step.failed
        assert not step.reraise and not step.retry
    assert requests == ["abcd", "ab", "cd", "c", "d"]
    assert sent == ["a", "b", "d"]
    assert [(f.item.op_id, f.code, f.reason) for f in failed] == [("c", "invalid", "bad op")]
    assert push.acked == 3 and not push.stopped


def test_429_waits_for_retry_after_and_defers_the_rest() -> None:
    p = live_protocol()
    push = p.push_round([item(x) for x in "abcd"])
    push.receive_error(Rejected("invalid", "bad"), NOW)  # split: ab, cd
    step = push.receive_error(RateLimited("slow down", retry_after=7.0), NOW)
    assert step.retry == [
        MarkRetry(("a", "b"), "slow down", NOW + 7.0),
        MarkRetry(("c", "d"), "deferred", NOW),
    ]
    assert push.stopped and push.next_batch() is None and not step.reraise


def test_429_without_retry_after_backs_off() -> None:
    p = live_protocol()
    push = p.push_round([item("a")])
    step = push.receive_error(RateLimited("slow down"), NOW)
    assert step.retry == [MarkRetry(("a",), "slow down", NOW + 0.5)]


def test_a_transient_failure_while_live_retries_on_a_timer() -> None:
    p = live_protocol()
    step = p.push_round([item("a")]).receive_error(ServerUnavailable("down"), NOW)
    assert step.retry == [MarkRetry(("a",), "ServerUnavailable: down", NOW + 0.5)]
    assert not step.reraise  # the live link stays up


def test_a_transient_failure_while_syncing_ends_the_session() -> None:
    p = SyncProtocol()
    step = p.push_round([item("a")]).receive_error(ServerUnavailable("down"), NOW)
    assert step.retry == [MarkRetry(("a",), "ServerUnavailable: down", NOW)]
    assert step.reraise


def test_a_refused_token_returns_the_items_at_once_and_ends_the_round() -> None:
    p = live_protocol()
    step = p.push_round([item("a")]).receive_error(AuthFailed("no"), NOW)
    assert step.retry == [MarkRetry(("a",), "AuthFailed: no", NOW)] and step.reraise


def test_deferred_operations_back_off_until_live_again() -> None:
    p = live_protocol()
    results = [OpResult(op_id="a", status="rejected", code="busy", status_code=503)]
    delays = []
    for _ in range(3):
        step = p.push_round([item("a")]).receive_results(results, NOW)
        [retry] = step.retry
        assert retry.op_ids == ("a",) and retry.reason == "deferred by the server"
        delays.append(retry.at - NOW)
    assert delays == [0.5, 1.0, 2.0]  # one backoff across rounds, not a fresh one each time
    p.transition(CS.SYNCING)
    p.transition(CS.LIVE)
    step = p.push_round([item("a")]).receive_results(results, NOW)
    assert step.retry[0].at == NOW + 0.5


def test_a_success_resets_the_request_backoff() -> None:
    p = live_protocol()
    p.push_round([item("a")]).receive_error(ServerUnavailable("x"), NOW)
    p.push_round([item("a")]).receive_results([applied("a")], NOW)
    step = p.push_round([item("a")]).receive_error(ServerUnavailable("x"), NOW)
    assert step.retry[0].at == NOW + 0.5


def test_backoff_honours_the_server_wait() -> None:
    b = Backoff(base=1.0, cap=8.0, rng=lambda: 1.0)
    assert [b.next(), b.next(), b.next(server_wait=30.0), b.next()] == [1.0, 2.0, 30.0, 8.0]
    b.reset()
    assert b.next() == 1.0


# --- resync -----------------------------------------------------------------------------------


def hmsg(seq: int, cid: str) -> HistoryMessage:
    return HistoryMessage(
        message_id=f"{cid}-{seq}", conversation_id=cid, seq=seq, sender="b", body="x", ts_ms=1
    )


def test_the_resync_plan_revalidates_down_to_the_lowest_stored_seq() -> None:
    p = SyncProtocol(cursor=3)
    plan = p.start_resync("e2")
    assert plan.next_request() == ConversationsSnapshot()
    plan.receive_snapshot(
        [{"id": "a", "last_seq": 7}, {"id": "b"}, {"id": "c"}], head=90, lowest_stored={"a": 4}
    )
    assert plan.next_request() == HistoryRequest("a", None, RESYNC_HISTORY_PAGE)
    w = plan.receive_history(
        HistoryPageWire(messages=(hmsg(5, "a"), hmsg(6, "a")), end_of_history=False)
    )
    # The newest page owns everything above its lowest seq: what the server lacks goes.
    assert (w.conversation_id, len(w.messages), w.complete) == ("a", 2, False)
    assert (w.low, w.high, w.last_seq, w.drop_below) == (5, None, 7, None)
    assert plan.next_request() == HistoryRequest("a", 5, RESYNC_HISTORY_PAGE)
    w = plan.receive_history(HistoryPageWire(messages=(hmsg(4, "a"),), end_of_history=False))
    assert (w.low, w.high, w.complete) == (4, 4, False)  # down to the store's lowest: done
    # b holds nothing in the store: its newest page only; older history comes on demand.
    assert plan.next_request() == HistoryRequest("b", None, RESYNC_HISTORY_PAGE)
    w = plan.receive_history(HistoryPageWire(messages=(hmsg(9, "b"),), end_of_history=False))
    assert (w.low, w.high, w.complete) == (9, None, False)
    assert plan.next_request() == HistoryRequest("c", None, RESYNC_HISTORY_PAGE)
    w = plan.receive_history(HistoryPageWire(messages=(), end_of_history=False))
    assert w.complete and w.low == 0  # an empty page ends it too: never loop on a silent server
    assert plan.next_request() is None
    assert plan.new_cursor() == 90 and plan.epoch == "e2"
    assert p.resynced(90, {"a": 6}) == Discontinuity(old_cursor=3, new_cursor=90)
    assert p.cursor == 90 and p.known_seq == {"a": 6} and p.gaps == set()


def test_the_resync_plan_is_bounded_per_conversation() -> None:
    from syncengine.core.resync import MAX_PAGES_PER_CONVERSATION

    plan = SyncProtocol(cursor=3).start_resync()
    plan.next_request()
    plan.receive_snapshot([{"id": "a"}], head=9, lowest_stored={"a": 1})
    seq = 100_000
    for _ in range(MAX_PAGES_PER_CONVERSATION - 1):
        w = plan.receive_history(HistoryPageWire(messages=(hmsg(seq, "a"),), end_of_history=False))
        assert w.drop_below is None
        seq -= 1
    w = plan.receive_history(HistoryPageWire(messages=(hmsg(seq, "a"),), end_of_history=False))
    assert w.drop_below == seq  # the rest is fetched again on demand
    assert plan.next_request() is None


def test_the_resync_plan_continues_from_its_state_after_a_429_or_a_restart() -> None:
    from syncengine.core.resync import Resync

    plan = SyncProtocol(cursor=3).start_resync("e")
    plan.next_request()
    plan.receive_snapshot([{"id": "a"}, {"id": "b"}], head=50, lowest_stored={"a": 1})
    plan.receive_history(HistoryPageWire(messages=(hmsg(40, "a"),), end_of_history=False))
    again = Resync.restore(orjson.loads(orjson.dumps(plan.state())))
    assert again.next_request() == HistoryRequest("a", 40, RESYNC_HISTORY_PAGE)
    assert (again.new_cursor(), again.epoch, again.old_cursor) == (50, "e", 3)
    # A plan saved before its snapshot arrived asks for the snapshot again.
    fresh = Resync.restore(Resync(7).state())
    assert fresh.next_request() == ConversationsSnapshot()


def test_a_conversation_gone_during_the_resync_is_removed_and_the_plan_goes_on() -> None:
    plan = SyncProtocol(cursor=3).start_resync()
    plan.next_request()
    plan.receive_snapshot([{"id": "a"}, {"id": "b"}], head=50)
    gone = plan.receive_gone()
    assert gone.conversation_id == "a"
    assert plan.next_request() == HistoryRequest("b", None, RESYNC_HISTORY_PAGE)


# --- history back-fill ------------------------------------------------------------------------


def m(seq: int | None) -> Message:
    return Message(
        id=f"m{seq}" if seq is not None else None,
        conversation_id="c",
        seq=seq,
        op_id=None,
        sender="a",
        body="x",
        created_at=1.0,
        state=MessageState.SENT if seq is not None else MessageState.PENDING,
    )


def no_lowest() -> int | None:
    raise AssertionError("the lowest stored seq was not needed")


@pytest.mark.parametrize(
    ("local", "complete", "connected"),
    [([m(s) for s in range(1, 4)], False, True), ([], True, True), ([], False, False)],
    ids=["page full", "history complete", "offline"],
)
def test_no_backfill_when_not_needed(local: list[Message], complete: bool, connected: bool) -> None:
    req = backfill_request(
        "c",
        local,
        before=None,
        limit=3,
        complete=complete,
        connected=connected,
        lowest_stored=no_lowest,
    )
    assert req is None


def test_backfill_starts_below_the_oldest_server_message_of_the_page() -> None:
    local = [m(8), m(9), m(None)]  # a pending echo has no seq
    req = backfill_request(
        "c", local, before=None, limit=5, complete=False, connected=True, lowest_stored=no_lowest
    )
    assert req == HistoryRequest("c", 8, 3)


def test_backfill_of_an_empty_page_starts_below_before_or_the_lowest_stored() -> None:
    kw: dict[str, Any] = {"limit": 5, "complete": False, "connected": True}
    assert backfill_request("c", [], before=20, lowest_stored=no_lowest, **kw) == HistoryRequest(
        "c", 20, 5
    )
    assert backfill_request("c", [], before=None, lowest_stored=lambda: 7, **kw) == HistoryRequest(
        "c", 7, 5
    )


def test_history_page_flags() -> None:
    page = history_page([m(5), m(6)], lowest=2, complete=True, from_store=True)
    assert page.has_more and not page.end_of_history  # older ones are stored locally
    page = history_page([m(2), m(3)], lowest=2, complete=True, from_store=False)
    assert not page.has_more and page.end_of_history and not page.from_store
    page = history_page([m(2)], lowest=2, complete=False, from_store=True)
    assert page.has_more and not page.end_of_history


# --- events for the app -----------------------------------------------------------------------


def test_each_durable_event_is_emitted_once_by_pos() -> None:
    f = EmitFilter(window=3)
    typing = TypingStarted(conversation_id="c1", user="bob", ts_ms=1)
    assert f.receive_applied([msg(1, 1), typing, msg(2, 2)], listening=True) == [
        msg(1, 1),
        typing,
        msg(2, 2),
    ]
    assert f.receive_applied([msg(1, 1), typing], listening=True) == [typing]  # ephemeral: always
    f.receive_applied([msg(3, 3), msg(4, 4)], listening=True)  # window of 3: pos 1 forgotten
    assert f.receive_applied([msg(1, 1)], listening=True) == [msg(1, 1)]


def test_presence_goes_stale_on_a_new_conversation_change() -> None:
    f = EmitFilter()
    f.receive_applied([msg(1, 1)], listening=True)
    assert not f.take_presence_stale()
    f.receive_applied([conv(2)], listening=True)
    assert f.take_presence_stale() and not f.take_presence_stale()  # once
    f.receive_applied([conv(2)], listening=True)  # already seen: nothing new
    assert not f.take_presence_stale()
    assert f.receive_applied([conv(3)], listening=False) == []  # nobody listens: hint only
    assert f.take_presence_stale()


def test_a_stale_presence_is_fetched_after_the_catch_up_of_the_same_tick() -> None:
    p = live_protocol(known_seq={"c1": 1})
    p.reached_live(NOW)
    p.receive_applied([conv(1)], listening=False)
    assert p.tick(NOW) == [PresenceSnapshot()]
    p.receive_applied([conv(2)], listening=False)
    p.receive_live_batch([msg(5, 4)])  # a gap too
    assert p.tick(NOW) == [CatchUp(), PresenceSnapshot()]


def test_a_failed_presence_snapshot_while_live_is_retried_after_the_backoff() -> None:
    p = live_protocol(known_seq={"c1": 1})
    p.reached_live(NOW)
    p.receive_applied([conv(1)], listening=False)
    assert p.tick(NOW) == [PresenceSnapshot()]
    # Refused while the link is up: still wanted, but not before the single-request wait.
    assert p.receive_presence_failed(ServerUnavailable("down"), NOW) == 0.5  # rng pinned
    assert p.tick(NOW + 0.4) == []
    assert p.tick(NOW + 0.5) == [PresenceSnapshot()]
    assert p.tick(NOW + 0.6) == []  # fetched once it is due, not again
    assert p.receive_presence_failed(RateLimited("slow", retry_after=9.0), NOW) == 9.0
    assert p.tick(NOW + 8.9) == []
    assert p.tick(NOW + 9.0) == [PresenceSnapshot()]


def test_sends_moved_to_sent_by_their_echo_are_reported_once_each() -> None:
    from syncengine.core.emit import sent_by_echo
    from syncengine.events import MessageSent

    def own(pos: int, op_id: str) -> MessageReceived:
        return MessageReceived(
            pos=pos,
            conversation_id="c1",
            seq=pos,
            ts_ms=1,
            message_id=f"m{pos}",
            sender="me",
            body="x",
            op_id=op_id,
        )

    batch = [msg(1, 1), own(2, "op-a"), own(3, "op-b"), own(2, "op-a")]  # a repeated echo
    assert sent_by_echo(batch, ["op-a"]) == [
        MessageSent(op_id="op-a", conversation_id="c1", message_id="m2", seq=2)
    ]
    assert sent_by_echo(batch, []) == []  # the ack came first: the echo reports nothing


def test_a_conversation_that_adds_the_user_back_is_read_again() -> None:
    from syncengine.core.resync import readded_conversations

    stored: dict[str, tuple[str, ...] | None] = {
        "out": ("alice",),  # bob was removed: the store keeps the conversation without him
        "in": ("alice", "bob"),
        "new": None,  # not in the store: a new conversation, nothing was missed
    }
    updates = [
        ("out", ("alice", "bob")),
        ("in", ("alice", "bob", "carol")),
        ("new", ("alice", "bob")),
        ("out", ("alice", "bob", "dave")),
    ]
    assert readded_conversations(updates, "bob", stored) == ["out"]
    # Removed and added back within one batch counts too.
    both = [("in", ("alice",)), ("in", ("alice", "bob"))]
    assert readded_conversations(both, "bob", stored) == ["in"]
    assert readded_conversations([], "bob", stored) == []


def test_a_round_stopped_mid_bisection_narrows_the_next_claim() -> None:
    # Under a sustained rate limit the next round must start from the half the bisection
    # reached: claiming the whole refused batch again would spend each token on it forever.
    proto = SyncProtocol(push_batch=8)
    proto.transition(CS.CONNECTING)
    proto.transition(CS.SYNCING)
    batch = [item(f"op-{n}") for n in range(8)]
    push = proto.push_round(batch)
    assert push.next_batch() == batch
    push.receive_error(Rejected("invalid", "one op is malformed", status=400), 0.0)
    assert proto.push_batch == 4  # split in two: the first half is next
    push.receive_error(RateLimited("slow down", retry_after=8.0), 0.0)
    assert push.stopped and push.next_batch() is None
    assert proto.push_batch == 4  # outlives the stopped round
    again = proto.push_round(batch[:4])
    again.receive_results([OpResult(op_id=i.op_id, status="applied") for i in batch[:4]], 9.0)
    assert again.next_batch() is None  # every item answered: the round is complete
    assert proto.push_batch == 8  # and the whole batch is claimed again
