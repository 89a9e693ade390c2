"""The reference server's pure rules (syncengine.server.rules): no SQLite, no sockets, no clock.

Each rule raises a domain error; its HTTP status comes from the protocol's one table.
"""

from __future__ import annotations

import orjson
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
        409,
    )


def test_epoch_chain_is_read_in_order_from_meta() -> None:
    meta = {
        rules.epoch_key(1, "b"): 5,
        "oldest_pos": 1,
        rules.epoch_key(0, "a"): 0,
        rules.epoch_key(2, "c"): 5,
    }
    assert rules.epoch_chain(meta) == [("a", 0), ("b", 5), ("c", 5)]


def test_a_cursor_continues_the_log_only_within_an_epoch_it_went_through() -> None:
    # The log began as "a"; the server restarted at head 5 ("b"), then at head 9 ("c").
    chain = [("a", 0), ("b", 5), ("c", 9)]
    rules.check_epoch("a", 5, chain)  # saw all of "a": continues
    rules.check_epoch("b", 9, chain)
    rules.check_epoch("c", 40, chain)  # the current epoch: the head check is check_cursor's
    rules.check_epoch(None, 3, chain)  # a client that knows no epoch yet is not checked
    rules.check_epoch("", 3, chain)
    rules.check_epoch("x", 3, [])  # a log without epochs checks nothing
    with pytest.raises(errors.CursorExpired):
        rules.check_epoch("a", 6, chain)  # "a" went on past 5 elsewhere: a restored copy
    with pytest.raises(errors.CursorExpired):
        rules.check_epoch("z", 1, chain)  # an epoch this log never had (a backup's clients)


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
    # Issue 12: an op id reused with another payload is a conflict (409), not a schema error.
    assert errors.ERROR_STATUS["op_id_conflict"] == errors.ERROR_STATUS["conflict"] == 409
    assert errors.ERROR_STATUS["invalid"] == 422
    assert errors.RateLimited("slow down", retry_after_ms=5).status == 429
    assert isinstance(rules.applied("o", "c", None, None, None, 0), OpResult)


def test_pulls_have_a_rate_budget_of_their_own() -> None:
    assert rules.rate_budget("GET", "/v1/events") == "pull"
    assert rules.rate_budget("POST", "/v1/ops") == "rest"
    assert rules.rate_budget("GET", "/v1/conversations") == "rest"
    assert rules.rate_budget("GET", "/v1/conversations/c/messages") == "rest"
    assert rules.rate_budget("PUT", "/v1/events") == "rest"
def test_an_unknown_member_is_refused_by_name() -> None:
    rules.check_known_users([])  # everyone named has an account
    with pytest.raises(errors.UnknownUser) as exc:
        rules.check_known_users(["nosuchuser", "typo"])
    assert exc.value.status == 404
    assert exc.value.body() == {"code": "unknown_user", "reason": "no such user: nosuchuser, typo"}
    assert isinstance(exc.value, errors.NotFound)  # a client that knows only 404 still copes


def test_the_presence_list_names_the_caller_even_without_a_conversation() -> None:
    assert rules.presence_audience("loner", []) == ["loner"]
    assert rules.presence_audience("bob", ["carol", "alice", "bob"]) == ["alice", "bob", "carol"]


def test_a_page_keeps_what_fits_its_byte_budget_and_always_its_first_item() -> None:
    assert rules.page_cut([], 100) == 0
    assert rules.page_cut([40, 40, 40], 100) == 2  # 40 + "," + 40 = 81; a third would be 122
    assert rules.page_cut([40, 40], 81) == 2  # exactly the budget, the comma included
    assert rules.page_cut([40, 40], 80) == 1
    assert rules.page_cut([500, 1], 100) == 1  # one item alone always goes, whatever its size
    assert rules.page_cut([10] * 5, 10_000) == 5


def test_a_history_page_cut_for_size_keeps_its_newest_messages() -> None:
    # oldest first: the newest two fit, so the client asks for the older ones next
    assert rules.history_cut([40, 40, 40], 100) == 2
    assert rules.history_cut([10, 10, 500], 100) == 1  # the newest alone, over the budget
    assert rules.history_cut([500, 10, 10], 100) == 2


def test_the_page_budget_stays_under_half_of_what_a_client_accepts() -> None:
    from syncengine.protocol import codec, ops

    assert ops.PAGE_BYTES_MAX * 2 <= codec.MAX_PAGE_BYTES
    assert ops.PAGE_BYTES_DEFAULT <= ops.PAGE_BYTES_MAX
    # the largest legal event (16,000 control characters, 6 bytes each escaped) fits alone
    assert len(orjson.dumps("\x01" * ops.MAX_BODY_CHARS)) + 1024 < ops.PAGE_BYTES_DEFAULT


def test_waiting_for_a_token_takes_none() -> None:
    bucket = rules.TokenBucket(rate=1.0, burst=2)
    assert bucket.wait(0.0) == 0.0 and bucket.wait(0.0) == 0.0  # a look takes nothing
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0
    assert bucket.wait(0.0) == pytest.approx(1.0)
    assert bucket.wait(0.5) == pytest.approx(0.5)
    assert bucket.wait(1.0) == 0.0
    limiter = rules.RateLimiter(rate=1.0, burst=1)
    assert limiter.wait("nobody", 0.0) == 0.0 and "nobody" not in limiter.buckets
    limiter.take("a", 0.0)
    assert limiter.wait("a", 0.0) > 0 and limiter.wait("b", 0.0) == 0.0


def test_clients_are_limited_by_address_and_ipv6_by_its_64() -> None:
    assert rules.address_key("127.0.0.2") == "127.0.0.2"
    assert rules.address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert rules.address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert rules.address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert rules.address_key("") == rules.address_key(None) == "unknown"
    assert rules.address_key("testclient") == "testclient"  # not an address: as it is


def test_failed_logins_are_keyed_by_address_never_by_name_alone() -> None:
    by_address, by_name = rules.login_keys("10.0.0.1", "bob")
    assert by_address == "10.0.0.1"
    assert by_name != rules.login_keys("10.0.0.2", "bob")[1]  # another address: its own
    assert "bob" not in {by_address}


def test_anyone_may_add_a_user_who_has_not_blocked_them() -> None:
    rules.check_may_add("alice", [])
    rules.check_may_add("alice", ["alice"])  # adding oneself is never refused
    with pytest.raises(errors.Forbidden) as exc:
        rules.check_may_add("mallory", ["carol", "bob", "bob"])
    assert exc.value.status == 403
    assert exc.value.reason == "bob, carol does not accept being added by mallory"


def test_a_block_list_is_bounded_and_never_holds_oneself() -> None:
    rules.check_block("bob", "mallory", 0, already=False)
    rules.check_block("bob", "mallory", rules.MAX_BLOCKS, already=True)  # again: no change
    with pytest.raises(errors.TooLarge):
        rules.check_block("bob", "mallory", rules.MAX_BLOCKS, already=False)
    with pytest.raises(errors.Invalid):
        rules.check_block("bob", "bob", 0, already=False)
