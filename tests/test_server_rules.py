"""The reference server's pure rules (syncengine.server.rules): no SQLite, no sockets, no clock.

Each rule raises a domain error; its HTTP status comes from the protocol's one table.
"""

from __future__ import annotations

import pytest

from syncengine.protocol import errors
from syncengine.protocol.bodies import OpResult
from syncengine.protocol.ops import MAX_MEMBERS
from syncengine.server import rules


def test_a_non_member_is_told_not_found() -> None:
    rules.require_member(True)
    with pytest.raises(errors.NotFound) as exc:
        rules.require_member(False)
    assert (exc.value.status, exc.value.reason) == (404, "no such conversation")
    with pytest.raises(errors.NotFound, match="no such message"):
        rules.require_member(False, "message")


def test_the_member_cap_refuses_only_a_new_member_past_it() -> None:
    rules.check_member_cap(MAX_MEMBERS - 1, already_member=False)
    rules.check_member_cap(MAX_MEMBERS, already_member=True)  # re-adding changes nothing
    with pytest.raises(errors.TooLarge) as exc:
        rules.check_member_cap(MAX_MEMBERS, already_member=False)
    assert exc.value.status == 413
    assert exc.value.reason == f"more than {MAX_MEMBERS} members"


def test_passwords_are_1_to_1024_characters() -> None:
    assert rules.check_password("x") == "x"
    assert rules.check_password("x" * 1024)
    for bad in ("", "x" * 1025, None, 3):
        with pytest.raises(errors.Invalid):
            rules.check_password(bad)


def test_a_replayed_creation_is_accepted_and_another_is_a_conflict() -> None:
    origin = rules.creation_origin("alice", "t", ("alice", "bob"))
    assert origin == rules.creation_origin("alice", "t", ("alice", "bob"))
    assert origin != rules.creation_origin("alice", "t2", ("alice", "bob"))
    assert origin != rules.creation_origin("bob", "t", ("alice", "bob"))
    rules.check_recreation(origin, origin, actor_is_member=True)
    with pytest.raises(errors.Conflict) as conflict:
        rules.check_recreation("other", origin, actor_is_member=True)
    assert conflict.value.status == 409
    with pytest.raises(errors.NotFound):  # the creator left since: the replay is refused
        rules.check_recreation(origin, origin, actor_is_member=False)


def test_a_target_op_must_be_an_applied_send() -> None:
    assert rules.target_message_id("send", "m1") == "m1"
    for kind, message_id in (("send", None), ("edit", "m1"), (None, None)):
        with pytest.raises(errors.NotFound, match="no such message"):
            rules.target_message_id(kind, message_id)


def test_only_the_sender_changes_a_message_and_a_deleted_one_is_not_edited() -> None:
    rules.check_target(("c", "alice", False), "c", "alice", editing=True)
    rules.check_target(("c", "alice", True), "c", "alice", editing=False)  # delete twice
    with pytest.raises(errors.NotFound):
        rules.check_target(None, "c", "alice", editing=True)
    with pytest.raises(errors.NotFound):  # a message of another conversation stays hidden
        rules.check_target(("other", "alice", False), "c", "alice", editing=True)
    with pytest.raises(errors.Forbidden) as forbidden:
        rules.check_target(("c", "bob", False), "c", "alice", editing=False)
    assert forbidden.value.status == 403
    with pytest.raises(errors.Conflict, match="deleted"):
        rules.check_target(("c", "alice", True), "c", "alice", editing=True)


def test_the_read_marker_never_goes_back_nor_past_the_last_seq() -> None:
    assert rules.read_advances(5, last_seq=9, current=3)
    assert not rules.read_advances(3, last_seq=9, current=3)
    assert not rules.read_advances(1, last_seq=9, current=3)
    with pytest.raises(errors.Invalid, match="past the conversation's last seq"):
        rules.read_advances(10, last_seq=9, current=3)


def test_results_carry_the_status_of_their_code() -> None:
    ok = rules.applied("o", "c", "m", 2, 7, 1000)
    assert (ok.status, ok.seq, ok.pos, ok.code) == ("applied", 2, 7, None)
    no = rules.rejected("o", errors.TooLarge("body longer than 16000 characters"))
    assert (no.status, no.code, no.status_code) == ("rejected", "too_large", 413)


def test_a_replay_returns_the_original_result() -> None:
    ok = rules.applied("o", "c", "m", 2, 7, 1000)
    again = rules.replayed(ok, "h", "h")
    assert again.status == "duplicate"
    assert (again.message_id, again.seq, again.pos, again.ts_ms) == ("m", 2, 7, 1000)
    refused = rules.rejected("o", errors.NotFound("no such conversation"))
    assert rules.replayed(refused, "h", "h") == refused  # a rejection stays a rejection
    conflict = rules.replayed(ok, "h", "other payload")
    assert (conflict.status, conflict.code, conflict.status_code) == (
        "rejected",
        "op_id_conflict",
        422,
    )


@pytest.mark.parametrize(
    ("since", "oldest", "head", "reason"),
    [
        (3, 5, 10, "the cursor is older than the retained event log"),
        (11, 1, 10, "the cursor is ahead of the server's event log"),
        (1, 1, 0, "the cursor is ahead of the server's event log"),
    ],
)
def test_a_cursor_outside_the_log_expires(since: int, oldest: int, head: int, reason: str) -> None:
    with pytest.raises(errors.CursorExpired) as exc:
        rules.check_cursor(since, oldest, head)
    assert exc.value.status == 410
    assert exc.value.body() == {"code": "cursor_expired", "reason": reason, "oldest_pos": oldest}


def test_cursors_at_the_edges_of_the_log_are_served() -> None:
    rules.check_cursor(4, 5, 10)  # just before the oldest retained event
    rules.check_cursor(10, 5, 10)  # at the head
    rules.check_cursor(0, 1, 0)  # an empty log


def test_one_pull_scans_a_bounded_window() -> None:
    assert rules.scan_end(0, 10) == 10
    assert rules.scan_end(0, 10**9) == rules.PULL_SCAN_MAX
    assert rules.scan_end(5, 5) == 5


def test_a_page_continues_after_its_last_event_or_after_the_window() -> None:
    assert rules.page_end([3, 4, 8], limit=2, end=100, head=100) == (4, True)
    assert rules.page_end([3, 4], limit=2, end=100, head=100) == (100, False)
    assert rules.page_end([], limit=2, end=50, head=100) == (50, True)  # the window moved on


def test_query_integers() -> None:
    assert rules.check_query_int("limit", None, 50, 1) == 50
    assert rules.check_query_int("limit", "", 50, 1) == 50
    assert rules.check_query_int("since", "7", 0, 0) == 7
    assert rules.check_query_int("since", str(1 << 70), 0, 0) == rules.MAX_QUERY_INT
    for raw in ("x", "1.5", "-1"):
        with pytest.raises(errors.BadRequest) as exc:
            rules.check_query_int("since", raw, 0, 0)
        assert exc.value.status == 400


def test_one_table_maps_every_code_to_its_status() -> None:
    assert errors.ERROR_STATUS["op_id_conflict"] == errors.ERROR_STATUS["invalid"] == 422
    assert errors.RateLimited("slow down", retry_after_ms=5).status == 429
    assert isinstance(rules.applied("o", "c", None, None, None, 0), OpResult)


def test_pulls_have_a_rate_budget_of_their_own() -> None:
    assert rules.rate_budget("GET", "/v1/events") == "pull"
    assert rules.rate_budget("POST", "/v1/ops") == "rest"
    assert rules.rate_budget("GET", "/v1/conversations") == "rest"
    assert rules.rate_budget("GET", "/v1/conversations/c/messages") == "rest"
    assert rules.rate_budget("PUT", "/v1/events") == "rest"
