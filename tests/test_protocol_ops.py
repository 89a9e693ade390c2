"""The pure protocol package: operations, bodies, errors and request builders. No I/O."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from syncengine.errors import UsageError
from syncengine.models import OpKind, OutboxItem, OutboxState
from syncengine.protocol import bodies, codec, errors, ops, requests

FRAMES = Path(__file__).parent / "data" / "frames"
CID = "01a21457-8cda-7d14-a097-08b50daad5a9"


def frame(name: str) -> Any:
    return json.loads((FRAMES / f"{name}.json").read_text(encoding="utf-8"))


# --- validate_op: the client's check before queueing ---------------------------------------


@pytest.mark.parametrize(
    ("kind", "cid", "payload", "message"),
    [
        (OpKind.SEND, "", {"body": "hi"}, "conversation_id must be a non-empty string"),
        (OpKind.SEND, "c\udc00", {"body": "hi"}, "conversation_id is not valid text"),
        (OpKind.SEND, "c", {"body": "  "}, "body must be a non-empty string"),
        (OpKind.EDIT, "c", {"body": 3, "message_id": "m"}, "body must be a non-empty string"),
        (OpKind.SEND, "c", {"body": "x" * 16_001}, "body is 16001 characters; the limit is"),
        (OpKind.SEND, "c", {"body": "a\ud800"}, "body is not valid text (lone surrogate)"),
        (OpKind.DELETE, "c", {}, "edit and delete need message_id or target_op_id"),
        (OpKind.MARK_READ, "c", {"seq": -1}, "seq must be a non-negative 64-bit integer"),
        (OpKind.MARK_READ, "c", {"seq": True}, "seq must be a non-negative 64-bit integer"),
        (OpKind.MARK_READ, "c", {"seq": 1 << 63}, "seq must be a non-negative 64-bit integer"),
        (OpKind.CREATE_CONVERSATION, "c", {"title": " "}, "title must be 1 to 200 characters"),
        (
            OpKind.CREATE_CONVERSATION,
            "c",
            {"title": "t", "members": ["a", ""]},
            "members must be a list of user names",
        ),
        (OpKind.SEND, "c", {"body": "hi", "x": {1, 2}}, "payload cannot be sent"),
        (OpKind.ADD_MEMBER, "c", {}, "user None is not 1-64 characters"),
        (OpKind.REMOVE_MEMBER, "c", {"user": "a b"}, "user 'a b' is not 1-64 characters"),
    ],
)
def test_validate_op_refuses_with_the_store_messages(
    kind: OpKind, cid: str, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as info:
        ops.validate_op(kind, cid, payload)
    assert message in str(info.value)


def test_validate_op_accepts_every_kind() -> None:
    ops.validate_op(OpKind.SEND, "c", {"body": "hi"})
    ops.validate_op("edit", "c", {"body": "hi", "target_op_id": "o"})
    ops.validate_op(OpKind.DELETE, "c", {"message_id": "m"})
    ops.validate_op(OpKind.MARK_READ, "c", {"seq": 0})
    ops.validate_op(OpKind.CREATE_CONVERSATION, CID, {"title": "t", "members": ["bob"]})
    ops.validate_op(OpKind.ADD_MEMBER, "c", {"user": "carol"})
    ops.validate_op(OpKind.REMOVE_MEMBER, "c", {"user": "bob"})


def test_member_operations_parse_to_one_typed_form() -> None:
    for kind, present in (("add_member", True), ("remove_member", False)):
        raw = {"op_id": "o", "kind": kind, "conversation_id": CID, "user": "carol"}
        assert ops.parse_op(raw, "alice") == ops.MemberOp(
            op_id="o", conversation_id=CID, user="carol", present=present
        )
        with pytest.raises(errors.Invalid):
            ops.parse_op({**raw, "user": ""}, "alice")


def test_op_to_wire_puts_the_envelope_first() -> None:
    item = OutboxItem(
        op_id="o1",
        kind=OpKind.SEND,
        conversation_id=CID,
        payload={"body": "hi"},
        state=OutboxState.PENDING,
        created_at=0.0,
    )
    wire = ops.op_to_wire(item)
    assert list(wire) == ["op_id", "kind", "conversation_id", "body"]
    assert wire == {"op_id": "o1", "kind": "send", "conversation_id": CID, "body": "hi"}
    # what the client pushes is what the server parses
    assert ops.parse_op(wire, "alice") == ops.SendOp(op_id="o1", conversation_id=CID, body="hi")


# --- the server's reading: typed errors, statuses from one table ---------------------------


def test_parse_errors_are_typed_and_their_status_comes_from_the_table() -> None:
    with pytest.raises(errors.Invalid) as invalid:
        ops.parse_op({"op_id": "o", "kind": "nope", "conversation_id": "c"}, "alice")
    assert (invalid.value.code, invalid.value.status) == ("invalid", 422)
    with pytest.raises(errors.TooLarge) as large:
        ops.parse_op(
            {"op_id": "o", "kind": "send", "conversation_id": "c", "body": "x" * 16_001}, "a"
        )
    assert (large.value.code, large.value.status) == ("too_large", 413)
    assert large.value.body() == {
        "code": "too_large",
        "reason": "body longer than 16000 characters",
    }


def test_every_rejection_class_has_a_status() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.Rejection) and c is not errors.Rejection
    ]
    assert {c.code for c in classes} == set(errors.ERROR_STATUS)
    expired = errors.CursorExpired("gone", oldest_pos=5)
    assert expired.status == 410
    assert expired.body() == {"code": "cursor_expired", "reason": "gone", "oldest_pos": 5}


# --- bodies: the recorded frames, byte for byte --------------------------------------------


def roundtrip(name: str, cls: type) -> None:
    obj = frame(name)
    typed = codec.structure(obj, cls)
    assert orjson.dumps(codec.encode_body(typed)) == orjson.dumps(obj)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("health", bodies.Health),
        ("login_request", bodies.LoginRequest),
        ("login_response", bodies.LoginResponse),
        ("conversation", bodies.ConversationSnapshot),
        ("conversation_list", bodies.ConversationList),
        ("create_conversation_request", bodies.CreateConversationRequest),
        ("add_member_request", bodies.AddMemberRequest),
        ("history_page", bodies.HistoryPageWire),
        ("presence_list", bodies.PresenceList),
    ],
)
def test_bodies_encode_to_the_recorded_bytes(name: str, cls: type) -> None:
    roundtrip(name, cls)


@pytest.mark.parametrize(
    "name", ["op_result_accepted.applied", "op_result_accepted.duplicate", "op_result_rejected"]
)
def test_op_results_keep_the_keys_of_their_kind(name: str) -> None:
    obj = frame(name)
    result = codec.structure(obj, bodies.OpResult)
    assert orjson.dumps(codec.encode_op_result(result)) == orjson.dumps(obj)


def test_frames_carry_their_type_first() -> None:
    ready = bodies.ReadyFrame(user="alice", device="d", head=3)
    assert orjson.dumps(codec.encode_frame(ready)) == (
        b'{"type":"ready","user":"alice","device":"d","head":3}'
    )
    assert codec.encode_frame(bodies.AuthFrame(token="t")) == {"type": "auth", "token": "t"}


# --- requests as data ----------------------------------------------------------------------


def test_request_paths_escape_every_segment() -> None:
    req = requests.history("../ops?x=1", before=None, limit=5)
    assert req.path == "/v1/conversations/..%2Fops%3Fx%3D1/messages"
    assert req.query == (("limit", 5),)
    assert requests.remove_member(CID, "a/b").path == f"/v1/conversations/{CID}/members/a%2Fb"


def test_request_builders() -> None:
    assert requests.pull(7, 500) == requests.Request(
        method="GET", path="/v1/events", query=(("since", 7), ("limit", 500))
    )
    assert requests.history(CID, 9, 50).query == (("limit", 50), ("before", 9))
    login = requests.login("alice", "pw", "laptop")
    assert (login.method, login.path, login.auth) == ("POST", "/v1/login", False)
    assert list(login.body) == list(frame("login_request"))  # the recorded key order
    assert requests.push([{"op_id": "o"}]).body == {"ops": [{"op_id": "o"}]}
    assert requests.rename(CID, "t").method == "PATCH"
    assert requests.add_member(CID, "bob").body == {"user": "bob"}
    assert requests.create_conversation(CID, "t", ("bob",)).body == {
        "id": CID,
        "title": "t",
        "members": ["bob"],
    }
    assert not requests.health().auth and requests.presence().auth
    assert requests.conversations().path == "/v1/conversations"


def test_an_unhashable_kind_is_invalid_not_a_crash() -> None:
    for kind in ([], {}, ["add_member"]):
        with pytest.raises(errors.Invalid):
            ops.parse_op({"op_id": "o", "kind": kind, "conversation_id": CID}, "alice")
