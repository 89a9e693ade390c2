"""The engine's decisions that hand-made mutants got past (issue 19), pinned where they now
live: ``core/sync.py``, ``core/push.py``, ``core/schedule.py``, ``core/resync.py``,
``core/emit.py``. No socket, no SQLite, no clock: each test drives the pure protocol the way
``client/session.py`` and ``client/exchange.py`` do and checks the decision itself, so the
bug is caught in milliseconds and named by the rule it breaks (the end-to-end versions are in
``tests/scenarios/test_engine_strength.py``).

``make mutation`` runs mutmut over ``core/`` with these tests among the covering ones; the
score and every surviving mutant are in ``docs/reliability.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from syncengine.core.policy import Disposition, classify_status, error_for_status, status_rule
from syncengine.core.push import MarkRetry
from syncengine.core.requests import CatchUp
from syncengine.core.resync import Resync
from syncengine.core.sync import SyncProtocol
from syncengine.errors import Rejected, ServerUnavailable
from syncengine.events import Discontinuity, MessageReceived
from syncengine.models import ConnectionState as CS
from syncengine.models import OpKind, OutboxItem, OutboxState
from syncengine.wire import EventPage, OpResult

NOW = 1_000.0
RETRYABLE_5XX = (500, 502, 503, 504, 408)


def msg(pos: int, seq: int, cid: str = "c1") -> MessageReceived:
    return MessageReceived(
        pos=pos, conversation_id=cid, seq=seq, ts_ms=1, message_id=f"m{pos}", sender="b", body="x"
    )


def item(op_id: str) -> OutboxItem:
    return OutboxItem(
        op_id=op_id,
        kind=OpKind.SEND,
        conversation_id="c1",
        payload={"body": op_id},
        state=OutboxState.SENDING,
    )


def applied(op_id: str) -> OpResult:
    return OpResult(op_id=op_id, status="applied", message_id=f"m-{op_id}", seq=1, pos=1)


def protocol_in(state: CS, *, live_link: bool, **kw: object) -> SyncProtocol:
    """A protocol moved along the table to ``state``; ``live_link``: the live channel is up."""
    p = SyncProtocol(rng=lambda: 1.0, **kw)  # type: ignore[arg-type]
    path = {CS.SYNCING: (CS.CONNECTING, CS.SYNCING), CS.LIVE: (CS.CONNECTING, CS.SYNCING, CS.LIVE)}
    for s in path[state]:
        p.transition(s)
    if live_link:
        p.receive_ready(p.cursor)
    return p


# --- the resync continues from the server's head, even when that is behind us ----------------


def test_a_resync_from_a_cursor_ahead_of_the_server_continues_from_the_servers_head() -> None:
    # After a server restore the client's cursor (500) is ahead of the server's log (120):
    # keeping the larger one would skip every event the server writes between 120 and 500.
    p = SyncProtocol(cursor=500, known_seq={"c1": 80})
    p.receive_ready(500)
    p.gaps.add("c1")
    plan = p.start_resync()
    assert plan.old_cursor == 500
    plan.receive_snapshot([{"id": "c1"}], head=120)
    assert plan.new_cursor() == 120
    event = p.resynced(plan.new_cursor(), {"c1": 15})
    assert event == Discontinuity(old_cursor=500, new_cursor=120)
    assert p.cursor == 120
    assert p.pull_request()["since"] == 120
    assert p.known_seq == {"c1": 15}  # the store's view after the rebuild, not the old one
    assert p.gaps == set() and not p.caught_up
    # The next page continues from the head: the server's events 121.. are taken.
    p.receive_page(EventPage(events=(msg(121, 16),), next=121, has_more=False))
    assert p.cursor == 121 and p.known_seq["c1"] == 16


def test_a_resync_forgets_live_decisions_made_against_the_old_cursor() -> None:
    p = SyncProtocol(cursor=0)
    p.receive_ready(0)
    p.receive_page(EventPage(events=(), next=0, has_more=False))  # caught up past the head
    assert p.receive_live(msg(400, 1)).cursor == 400
    p.resynced(120)
    # Caught-up is gone and the old high-water mark does not hide the events after 120.
    assert p.receive_live(msg(130, 2)).cursor is None
    p.receive_ready(120)
    p.receive_page(EventPage(events=(), next=120, has_more=False))
    assert p.receive_live(msg(130, 3)).cursor == 130


def test_the_resync_plan_asks_for_the_snapshot_once_and_needs_it_for_the_cursor() -> None:
    plan = Resync(7)
    with pytest.raises(RuntimeError):
        plan.new_cursor()
    plan.next_request()
    with pytest.raises(RuntimeError):
        plan.next_request()  # asked but unanswered: a driver bug, never a second snapshot
    plan.receive_snapshot([], head=0)
    assert plan.new_cursor() == 0  # an empty server: head 0 is a head, not "none yet"
    assert plan.next_request() is None


# --- pulled pages record their seqs: no false gap after a catch-up ----------------------------


def test_seqs_of_every_pulled_page_are_recorded_so_the_next_live_event_is_no_gap() -> None:
    p = protocol_in(CS.SYNCING, live_link=True, known_seq={"c1": 2})
    assert not p.receive_page(EventPage(events=(msg(1, 3), msg(2, 4)), next=2, has_more=True))
    assert p.known_seq == {"c1": 4}  # recorded already for a page that is not the last
    assert p.receive_page(EventPage(events=(msg(3, 5), msg(4, 1, "c2")), next=4, has_more=False))
    assert p.known_seq == {"c1": 5, "c2": 1}
    decision = p.receive_live(msg(5, 6))
    assert not decision.gap and p.gaps == set()
    p.reached_live(NOW)
    assert p.tick(NOW + 0.1) == []  # no false gap, no extra pull


def test_an_older_seq_in_a_page_never_lowers_the_known_seq() -> None:
    p = SyncProtocol(known_seq={"c1": 9})
    p.receive_page(EventPage(events=(msg(1, 3),), next=1, has_more=False))
    assert p.known_seq == {"c1": 9}


def test_a_page_that_would_move_the_cursor_back_is_not_taken() -> None:
    p = SyncProtocol(cursor=50, known_seq={"c1": 1})
    assert p.receive_page(EventPage(events=(msg(10, 7),), next=10, has_more=False))
    assert p.cursor == 50 and p.known_seq == {"c1": 1}


def run_catch_up(
    p: SyncProtocol, log: list[int], serve: Callable[[int, int], EventPage]
) -> list[dict[str, int]]:
    """The catch-up loop of ``client/exchange.py``: each page's successor is asked for before
    the page is applied. Returns the queries sent, in order."""
    queries: list[dict[str, int]] = []

    def pull(query: dict[str, int]) -> EventPage:
        queries.append(query)
        return serve(query["since"], query["limit"])

    page = pull(p.pull_request())
    while True:
        ahead = p.prefetch_request(page)
        nxt = pull(ahead) if ahead is not None else None
        p.page_cursor(page)  # the cursor the page commits with
        if p.receive_page(page):
            assert nxt is None
            return queries
        assert nxt is not None
        page = nxt


def test_a_catch_up_of_300_events_in_pages_of_50_sends_six_requests_none_twice() -> None:
    log = list(range(1, 301))

    def serve(since: int, limit: int) -> EventPage:
        events = tuple(msg(pos, pos) for pos in log if pos > since)[:limit]
        nxt = events[-1].pos if events else since
        return EventPage(events=events, next=nxt, has_more=nxt < log[-1])

    p = protocol_in(CS.SYNCING, live_link=True, page_limit=50)
    queries = run_catch_up(p, log, serve)
    assert [q["since"] for q in queries] == [0, 50, 100, 150, 200, 250]
    assert p.cursor == 300 and p.known_seq == {"c1": 300} and p.caught_up
    assert p.receive_live(msg(301, 301)).gap is False


# --- a seq gap on the live channel pulls at once ----------------------------------------------


@pytest.mark.parametrize(
    ("seq", "gap"), [(3, False), (4, True), (9, True), (2, False), (1, False)]
)
def test_a_live_seq_gap_is_exactly_a_jump_past_the_next_seq(seq: int, gap: bool) -> None:
    p = protocol_in(CS.LIVE, live_link=True, known_seq={"c1": 2})
    p.reached_live(NOW)
    assert p.receive_live(msg(10, seq)).gap is gap
    assert p.known_seq["c1"] == max(2, seq)  # never lowered by an old event
    assert p.tick(NOW + 0.05) == ([CatchUp()] if gap else [])


def test_an_event_of_an_unknown_conversation_is_no_gap() -> None:
    p = protocol_in(CS.LIVE, live_link=True, known_seq={"c1": 2})
    p.reached_live(NOW)
    assert not p.receive_live(msg(10, 7, "new")).gap
    assert p.known_seq["new"] == 7
    assert p.tick(NOW + 0.05) == []


def test_a_gap_in_a_batch_pulls_at_once_and_stops_the_cursor_following_live() -> None:
    p = protocol_in(CS.LIVE, live_link=True, known_seq={"c1": 1})
    p.receive_page(EventPage(events=(), next=0, has_more=False))  # caught up
    p.reached_live(NOW)
    cursor, gap = p.receive_live_batch([msg(1, 2), msg(3, 4), msg(4, 5)])
    assert (cursor, gap) == (1, True)  # the cursor stops before the hole
    assert not p.caught_up and p.gaps == {"c1"}
    assert p.tick(NOW + 0.05) == [CatchUp()]  # long before the 30 s safety pull


def test_without_a_gap_nothing_is_pulled_before_the_safety_pull() -> None:
    p = protocol_in(CS.LIVE, live_link=True, known_seq={"c1": 1})
    p.reached_live(NOW)
    p.receive_live_batch([msg(1, 2), msg(2, 3)])
    assert p.tick(NOW + 29.9) == []
    assert p.tick(NOW + 30.0) == [CatchUp()]


def test_a_live_cursor_is_handed_out_once_and_only_forward() -> None:
    p = protocol_in(CS.LIVE, live_link=True)
    p.receive_page(EventPage(events=(), next=0, has_more=False))
    assert p.receive_live(msg(5, 1)).cursor == 5
    assert p.receive_live(msg(5, 1)).cursor is None  # the same event again (replay)
    assert p.receive_live(msg(4, 2, "c2")).cursor is None  # behind what was handed out
    p.committed(5)
    assert p.cursor == 5
    p.committed(3)  # a late, older commit never moves the cursor back
    assert p.cursor == 5


# --- a push refused as a whole (413) is bisected down to the culprit --------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 7, 8])
@pytest.mark.parametrize("culprit", ["first", "middle", "last"])
def test_a_whole_batch_refusal_ends_with_every_item_answered(n: int, culprit: str) -> None:
    ids = [f"op{i}" for i in range(n)]
    bad = {"first": ids[0], "middle": ids[n // 2], "last": ids[-1]}[culprit]
    p = protocol_in(CS.LIVE, live_link=True)
    push = p.push_round([item(i) for i in ids])
    sent: list[str] = []
    failed: list[str] = []
    requests = 0
    while (batch := push.next_batch()) is not None:
        requests += 1
        assert requests <= 2 * n, "the bisection does not converge"
        assert len(batch) >= 1
        batch_ids = [i.op_id for i in batch]
        if bad in batch_ids:
            error = error_for_status(413, "too_large", "request too large")
            assert isinstance(error, Rejected)
            step = push.receive_error(error, NOW)
        else:
            step = push.receive_results([applied(i) for i in batch_ids], NOW)
        assert not step.retry and not step.reraise
        sent += [r.op_id for r in step.sent]
        failed += [f.item.op_id for f in step.failed]
    # Nobody is left SENDING: each item is either acknowledged or the one culprit.
    assert sorted(sent) == sorted(i for i in ids if i != bad)
    assert failed == [bad]
    assert push.acked == n - 1 and not push.stopped
    # Halving: one request per level on each side of the culprit's path, no more.
    assert requests <= 2 * math.ceil(math.log2(n)) + 1


def test_a_two_item_refusal_splits_into_two_single_requests() -> None:
    push = protocol_in(CS.LIVE, live_link=True).push_round([item("a"), item("b")])
    push.receive_error(Rejected("too_large", "x", status=413), NOW)
    assert [i.op_id for i in push.next_batch() or ()] == ["a"]
    push.receive_results([applied("a")], NOW)
    assert [i.op_id for i in push.next_batch() or ()] == ["b"]


# --- 500, 502, 503, 504 and 408 are transient: never FAILED -----------------------------------


@pytest.mark.parametrize("status", RETRYABLE_5XX)
def test_a_transient_status_is_retryable_in_the_one_table(status: int) -> None:
    assert classify_status(status) is Disposition.RETRY
    assert isinstance(error_for_status(status, f"http_{status}", "oops"), ServerUnavailable)


@pytest.mark.parametrize("status", RETRYABLE_5XX)
def test_a_push_answered_with_a_transient_status_while_live_is_retried_not_failed(
    status: int,
) -> None:
    p = protocol_in(CS.LIVE, live_link=True)
    push = p.push_round([item("a"), item("b")])
    step = push.receive_error(error_for_status(status, f"http_{status}", "oops"), NOW)
    assert step.failed == []
    assert step.retry == [MarkRetry(("a", "b"), step.retry[0].reason, NOW + 0.5)]
    assert not step.reraise and push.stopped


@pytest.mark.parametrize("status", RETRYABLE_5XX)
def test_a_push_answered_with_a_transient_status_while_syncing_ends_the_session(
    status: int,
) -> None:
    p = protocol_in(CS.SYNCING, live_link=False)
    push = p.push_round([item("a")])
    step = push.receive_error(error_for_status(status, f"http_{status}", "oops"), NOW)
    assert step.failed == [] and step.reraise
    assert step.retry == [MarkRetry(("a",), step.retry[0].reason, NOW)]  # pending at once


@pytest.mark.parametrize("status", (*RETRYABLE_5XX, 429, 599))
def test_an_operation_answered_with_a_transient_status_is_retried(status: int) -> None:
    p = protocol_in(CS.LIVE, live_link=True)
    push = p.push_round([item("a"), item("b")])
    refused = OpResult(op_id="a", status="rejected", code="x", reason="y", status_code=status)
    step = push.receive_results([refused, applied("b")], NOW)
    assert [r.op_id for r in step.sent] == ["b"]
    assert step.failed == []
    assert step.retry == [MarkRetry(("a",), "deferred by the server", NOW + 0.5)]


@pytest.mark.parametrize("status", (400, 403, 404, 409, 413, 422, None))
def test_an_operation_refused_for_good_is_failed(status: int | None) -> None:
    push = protocol_in(CS.LIVE, live_link=True).push_round([item("a")])
    refused = OpResult(op_id="a", status="rejected", code="bad", reason="no", status_code=status)
    step = push.receive_results([refused], NOW)
    assert [(f.item.op_id, f.code, f.reason) for f in step.failed] == [("a", "bad", "no")]
    assert step.retry == [] and step.sent == []


def test_an_unanswered_operation_is_retried_never_assumed_sent() -> None:
    push = protocol_in(CS.LIVE, live_link=True).push_round([item("a"), item("b")])
    step = push.receive_results([applied("a")], NOW)
    assert [r.op_id for r in step.sent] == ["a"]
    assert [r.op_ids for r in step.retry] == [("b",)]
    assert push.acked == 1


def test_a_push_round_is_live_only_with_the_live_link_up() -> None:
    # LIVE without a live link is polling: a transient failure ends the session there.
    p = protocol_in(CS.LIVE, live_link=False)
    step = p.push_round([item("a")]).receive_error(ServerUnavailable("down"), NOW)
    assert step.reraise


@pytest.mark.parametrize(
    ("status", "disposition", "error"),
    [
        (499, Disposition.FAIL_OP, Rejected),
        (501, Disposition.RETRY, ServerUnavailable),
        (599, Disposition.RETRY, ServerUnavailable),
        (600, Disposition.RETRY, Rejected),  # not a 5xx: an unexpected answer, not a verdict
        (302, Disposition.RETRY, Rejected),
    ],
)
def test_a_status_outside_the_table_falls_back_to_the_rule_of_its_class(
    status: int, disposition: Disposition, error: type[Exception]
) -> None:
    rule = status_rule(status)
    assert (rule.disposition, rule.error) == (disposition, error)
