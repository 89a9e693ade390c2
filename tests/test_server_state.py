"""The server's pure rules (syncengine.server.state): no I/O, time passed in."""

from __future__ import annotations

import uuid

import pytest

from syncengine.models import new_id
from syncengine.server import state
from syncengine.server.state import ApiError, RateLimiter, TokenBucket


def test_token_bucket_allows_a_burst_then_refills() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == pytest.approx(0.5)
    assert bucket.take(10.25) == pytest.approx(0.25)
    assert bucket.take(10.5) == 0.0
    assert bucket.take(100.0) == 0.0  # refilled, but never past the burst
    assert [bucket.take(100.0) for _ in range(3)][-1] == pytest.approx(0.5)


def test_rate_limiter_keeps_one_bucket_per_key_and_forgets_idle_ones() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.take("alice", 0.0) == 0.0
    assert limiter.take("alice", 0.0) > 0
    assert limiter.take("bob", 0.0) == 0.0
    limiter.forget_idle(0.5)
    assert set(limiter.buckets) == {"alice", "bob"}
    limiter.forget_idle(5.0)
    assert limiter.buckets == {}


def test_retry_after_is_whole_milliseconds_rounded_up() -> None:
    assert state.retry_after_ms(0.0001) == 1
    assert state.retry_after_ms(0.25) == 250
    assert state.retry_after_ms(0.2501) == 251


def test_conversation_ids_must_be_canonical() -> None:
    cid = new_id()
    assert state.is_conversation_id(cid)
    assert state.is_conversation_id(str(uuid.uuid4()))
    for bad in (cid.upper(), cid.replace("-", ""), "{" + cid + "}", "", None, 5, cid + " "):
        assert not state.is_conversation_id(bad)


def test_members_are_sorted_unique_and_include_the_creator() -> None:
    assert state.check_members(["carol", "bob", "bob"], "alice") == ("alice", "bob", "carol")
    with pytest.raises(ApiError) as exc:
        state.check_members(["ok", "not ok"], "alice")
    assert (exc.value.status, exc.value.code) == (422, "invalid")
    with pytest.raises(ApiError) as too_many:
        state.check_members([f"u{i}" for i in range(1000)], "alice")
    assert too_many.value.status == 413


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"kind": "send", "conversation_id": "c", "body": "hi"}, state.SendOp),
        ({"kind": "send", "conversation_id": "c", "body": ""}, state.SendOp),
        ({"kind": "edit", "conversation_id": "c", "body": "x", "message_id": "m"}, state.EditOp),
        ({"kind": "delete", "conversation_id": "c", "target_op_id": "o"}, state.DeleteOp),
        ({"kind": "mark_read", "conversation_id": "c", "seq": 0}, state.MarkReadOp),
        (
            {"kind": "create_conversation", "conversation_id": new_id()},
            state.CreateConversationOp,
        ),
    ],
)
def test_parse_op_accepts_each_kind(raw: dict[str, object], expected: type) -> None:
    op = state.parse_op({"op_id": "op-1", **raw}, "alice")
    assert isinstance(op, expected)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ({"kind": "send", "conversation_id": "c"}, 422),
        ({"kind": "send", "conversation_id": "c", "body": "x" * 16_001}, 413),
        ({"kind": "send", "conversation_id": 5, "body": "x"}, 422),
        ({"kind": "edit", "conversation_id": "c", "body": "x"}, 422),
        ({"kind": "edit", "conversation_id": "c", "body": "x", "message_id": "m",
          "target_op_id": "o"}, 422),
        ({"kind": "delete", "conversation_id": "c", "message_id": 5}, 422),
        ({"kind": "delete", "conversation_id": "c", "target_op_id": "has space"}, 422),
        ({"kind": "mark_read", "conversation_id": "c", "seq": True}, 422),
        ({"kind": "mark_read", "conversation_id": "c", "seq": -1}, 422),
        ({"kind": "create_conversation", "conversation_id": "nope"}, 422),
        ({"kind": "create_conversation", "conversation_id": new_id(), "title": "x" * 201}, 413),
        ({"kind": "teleport", "conversation_id": "c"}, 422),
        ({"conversation_id": "c"}, 422),
    ],
)  # fmt: skip
def test_parse_op_rejects_with_the_right_status(raw: dict[str, object], status: int) -> None:
    with pytest.raises(ApiError) as exc:
        state.parse_op({"op_id": "op-1", **raw}, "alice")
    assert exc.value.status == status
    assert exc.value.body() == {"code": exc.value.code, "reason": exc.value.reason}


def test_payload_hash_covers_protocol_fields_only() -> None:
    op = {"op_id": "o", "kind": "send", "conversation_id": "c", "body": "hi"}
    same = state.payload_hash(op)
    assert state.payload_hash(dict(reversed(list(op.items())))) == same
    assert state.payload_hash({**op, "client_meta": {"retry": 3}}) == same
    assert state.payload_hash({**op, "body": "hi!"}) != same
    assert state.payload_hash({**op, "seq": None}) != same


def test_parse_batch_checks_the_envelope() -> None:
    ops = [{"op_id": "a", "kind": "send"}]
    assert state.parse_batch({"ops": ops}) == ops
    for bad in ({"ops": {}}, [], {"ops": [{"kind": "send"}]}, {"ops": [{"op_id": ""}]}):
        with pytest.raises(ApiError) as exc:
            state.parse_batch(bad)
        assert exc.value.status == 422
    with pytest.raises(ApiError) as too_many:
        state.parse_batch({"ops": [{"op_id": str(i)} for i in range(501)]})
    assert too_many.value.status == 413


def test_password_hash_depends_on_salt_and_params() -> None:
    params = state.scrypt_params(1 << 8)
    digest = state.hash_password("pw", b"salt" * 4, params)
    assert len(digest) == 32
    assert state.hash_password("pw", b"salt" * 4, params) == digest
    assert state.hash_password("pw", b"pepper" * 3, params) != digest
    assert state.hash_password("pw", b"salt" * 4, state.scrypt_params(1 << 9)) != digest
