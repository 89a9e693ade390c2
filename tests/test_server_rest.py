"""Every REST endpoint of the reference server, in-process (ASGI) and on a real uvicorn."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from conftest_server import TRANSPORTS, Api, make_config, open_api
except ModuleNotFoundError:  # tests/ is a package
    from tests.conftest_server import TRANSPORTS, Api, make_config, open_api

from syncengine import wire
from syncengine.models import new_id
from syncengine.server import state
from syncengine.server.app import create_app

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=TRANSPORTS)
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    """alice, bob and carol logged in, in-process and on uvicorn."""
    async with open_api(request.param, tmp_path) as api:
        await api.login("alice")
        await api.login("bob")
        await api.login("carol")
        yield api


@pytest.fixture
async def asgi_api(tmp_path: Path) -> AsyncIterator[Api]:
    """alice logged in, in-process only: for the many-case validation tests."""
    async with open_api("asgi", tmp_path) as api:
        await api.login("alice")
        yield api


# --- health and login ---------------------------------------------------------------------


async def test_health_reports_the_head(api: Api) -> None:
    assert (await api.client.get("/v1/health")).json() == {"ok": True, "head": 0}
    await api.create("alice", ["bob"])
    assert (await api.client.get("/v1/health")).json() == {"ok": True, "head": 1}


async def test_login_creates_then_checks_the_password(api: Api) -> None:
    body = {"user": "dave", "password": "right", "device": "phone"}
    first = await api.client.post("/v1/login", json=body)
    assert first.status_code == 200
    assert first.json()["user"] == "dave" and first.json()["device"] == "phone"
    assert first.json()["expires_in_s"] == 30 * 24 * 3600
    assert len(first.json()["token"]) >= 43
    again = await api.client.post("/v1/login", json=body)
    assert again.status_code == 200 and again.json()["token"] != first.json()["token"]
    wrong = await api.client.post("/v1/login", json={**body, "password": "wrong"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "bad_credentials"


async def test_closed_registration_refuses_unknown_users(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, open_registration=False) as api:
        response = await api.client.post(
            "/v1/login", json={"user": "eve", "password": "x", "device": "d"}
        )
        assert response.status_code == 401
        assert response.json()["code"] == "bad_credentials"


@pytest.mark.parametrize(
    "body",
    [
        {"user": "", "password": "p", "device": "d"},
        {"user": "a b", "password": "p", "device": "d"},
        {"user": "alice", "password": "", "device": "d"},
        {"user": "alice", "password": 5, "device": "d"},
        {"user": "alice", "password": "p"},
        {"user": "x" * 65, "password": "p", "device": "d"},
    ],
)
async def test_login_validates_its_fields(asgi_api: Api, body: dict[str, object]) -> None:
    response = await asgi_api.client.post("/v1/login", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid"


# --- conversations ------------------------------------------------------------------------


async def test_create_conversation_is_idempotent_and_conflicts(api: Api) -> None:
    cid = new_id()
    body = {"id": cid, "title": "plans", "members": ["bob"]}
    first = await api.client.post("/v1/conversations", json=body, headers=api.auth("alice"))
    assert first.status_code == 201
    conv = first.json()
    assert conv == {
        "id": cid,
        "title": "plans",
        "members": ["alice", "bob"],
        "last_seq": 1,
        "created_by": "alice",
        "read_seq": 0,
    }
    again = await api.client.post("/v1/conversations", json=body, headers=api.auth("alice"))
    assert again.status_code == 200 and again.json() == conv
    other = await api.client.post(
        "/v1/conversations", json={**body, "title": "other"}, headers=api.auth("alice")
    )
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    by_bob = await api.client.post("/v1/conversations", json=body, headers=api.auth("bob"))
    assert by_bob.status_code == 409
    assert len(api.state.all_events()) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"id": "not-a-uuid", "title": "t"}, 422),
        ({"id": new_id().upper(), "title": "t"}, 422),
        ({"id": new_id(), "title": 5}, 422),
        ({"id": new_id(), "title": "x" * 201}, 413),
        ({"id": new_id(), "members": "bob"}, 422),
        ({"id": new_id(), "members": ["bad name"]}, 422),
        ({"id": new_id(), "members": [f"u{i}" for i in range(1001)]}, 413),
    ],
)
async def test_create_conversation_validates(
    asgi_api: Api, body: dict[str, object], status: int
) -> None:
    response = await asgi_api.client.post(
        "/v1/conversations", json=body, headers=asgi_api.auth("alice")
    )
    assert response.status_code == status
    assert set(response.json()) >= {"code", "reason"}


async def test_list_conversations_shows_only_the_callers(api: Api) -> None:
    mine = await api.create("alice", ["bob"], title="ab")
    await api.create("bob", ["carol"], title="bc")
    response = await api.client.get("/v1/conversations", headers=api.auth("alice"))
    body = response.json()
    assert [c["id"] for c in body["conversations"]] == [mine]
    assert body["head"] == 2


async def test_rename_add_and_remove_members_emit_events(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    renamed = await api.client.patch(
        f"/v1/conversations/{cid}", json={"title": "new"}, headers=api.auth("bob")
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "new"
    same = await api.client.patch(
        f"/v1/conversations/{cid}", json={"title": "new"}, headers=api.auth("bob")
    )
    assert same.status_code == 200
    added = await api.client.post(
        f"/v1/conversations/{cid}/members", json={"user": "carol"}, headers=api.auth("bob")
    )
    assert added.json()["members"] == ["alice", "bob", "carol"]
    removed = await api.client.delete(
        f"/v1/conversations/{cid}/members/alice", headers=api.auth("carol")
    )
    assert removed.json()["members"] == ["bob", "carol"]
    updates = [e for e in api.state.all_events() if e["conversation_id"] == cid]
    assert [(e["seq"], e["title"], e["members"], e["actor"]) for e in updates] == [
        (1, "t", ["alice", "bob"], "alice"),
        (2, "new", ["alice", "bob"], "bob"),
        (3, "new", ["alice", "bob", "carol"], "bob"),
        (4, "new", ["bob", "carol"], "carol"),
    ]


async def test_rename_needs_a_title(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    response = await api.client.patch(
        f"/v1/conversations/{cid}", json={}, headers=api.auth("alice")
    )
    assert response.status_code == 422


# --- operations ---------------------------------------------------------------------------


async def test_send_edit_delete_and_mark_read(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    send_id = new_id()
    sent = await api.send("alice", cid, "hi", op_id=send_id)
    assert sent["status"] == "applied"
    assert (sent["seq"], sent["pos"]) == (2, 2)
    replay = await api.client.post(
        "/v1/ops",
        json={"ops": [{"op_id": send_id, "kind": "send", "conversation_id": cid, "body": "hi"}]},
        headers=api.auth("alice"),
    )
    (decoded,) = wire.decode_op_results(replay.content)
    assert (decoded.status, decoded.message_id, decoded.seq) == ("duplicate", sent["message_id"], 2)
    edit, delete_unknown = await api.ops(
        "alice",
        {
            "op_id": new_id(),
            "kind": "edit",
            "conversation_id": cid,
            "target_op_id": send_id,
            "body": "hi!",
        },
        {"op_id": new_id(), "kind": "delete", "conversation_id": cid, "message_id": new_id()},
    )
    assert edit["status"] == "applied" and edit["message_id"] == sent["message_id"]
    assert edit["seq"] == 3
    assert delete_unknown["status"] == "rejected" and delete_unknown["status_code"] == 404
    (read,) = await api.ops(
        "bob", {"op_id": new_id(), "kind": "mark_read", "conversation_id": cid, "seq": 3}
    )
    assert read["status"] == "applied" and read["seq"] == 4
    (stale_read,) = await api.ops(
        "bob", {"op_id": new_id(), "kind": "mark_read", "conversation_id": cid, "seq": 2}
    )
    assert stale_read["status"] == "applied" and stale_read["seq"] is None
    (deleted,) = await api.ops(
        "alice",
        {
            "op_id": new_id(),
            "kind": "delete",
            "conversation_id": cid,
            "message_id": sent["message_id"],
        },
    )
    assert deleted["status"] == "applied" and deleted["seq"] == 5
    (again,) = await api.ops(
        "alice",
        {
            "op_id": new_id(),
            "kind": "delete",
            "conversation_id": cid,
            "message_id": sent["message_id"],
        },
    )
    assert again["status"] == "applied" and again["seq"] is None
    (edit_deleted,) = await api.ops(
        "alice",
        {
            "op_id": new_id(),
            "kind": "edit",
            "conversation_id": cid,
            "message_id": sent["message_id"],
            "body": "zombie",
        },
    )
    assert edit_deleted["code"] == "conflict" and edit_deleted["status_code"] == 409
    (message,) = api.state.all_messages(cid)
    assert message["deleted"] and message["body"] == "" and message["edited_ms"] is not None
    types = [e["type"] for e in api.state.all_events()]
    assert types == [
        "conversation_updated",
        "message_received",
        "message_updated",
        "read_receipt",
        "message_deleted",
    ]


async def test_only_the_sender_may_edit_or_delete(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    sent = await api.send("alice", cid)
    results = await api.ops(
        "bob",
        {
            "op_id": new_id(),
            "kind": "edit",
            "conversation_id": cid,
            "message_id": sent["message_id"],
            "body": "mine now",
        },
        {
            "op_id": new_id(),
            "kind": "delete",
            "conversation_id": cid,
            "message_id": sent["message_id"],
        },
    )
    assert [(r["code"], r["status_code"]) for r in results] == [("forbidden", 403)] * 2


async def test_target_op_id_is_scoped_to_the_user(api: Api) -> None:
    # Issue 12: op ids are the user's, whatever the device: alice's phone may name the send
    # of her laptop by its op id; bob may not (it is not his operation).
    await api.login("alice", device="phone")
    await api.login("bob", device="phone")
    cid = await api.create("alice", ["bob"])
    send_id = new_id()
    await api.send("alice", cid, op_id=send_id)

    async def edit(who: str) -> dict[str, Any]:
        op = {
            "op_id": new_id(),
            "kind": "edit",
            "conversation_id": cid,
            "target_op_id": send_id,
            "body": "x",
        }
        r = await api.client.post("/v1/ops", json={"ops": [op]}, headers=api.auth(who))
        return dict(r.json()["results"][0])

    assert (await edit("bob/phone"))["code"] == "not_found"
    assert (await edit("alice/phone"))["status"] == "applied"
    assert [m["body"] for m in api.state.all_messages(cid)] == ["x"]


async def test_create_conversation_op(api: Api) -> None:
    cid = new_id()
    op = {
        "op_id": new_id(),
        "kind": "create_conversation",
        "conversation_id": cid,
        "title": "offline-made",
        "members": ["bob"],
    }
    (result,) = await api.ops("alice", op)
    assert result["status"] == "applied" and result["seq"] == 1
    same = {**op, "op_id": new_id()}
    (again,) = await api.ops("alice", same)
    assert again["status"] == "applied" and again["pos"] == result["pos"]
    (taken,) = await api.ops("bob", {**op, "op_id": new_id()})
    assert taken["code"] == "conflict"
    assert api.state.members(cid) == ("alice", "bob")


async def test_replay_returns_the_original_result(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "once"}
    (first,) = await api.ops("alice", op)
    (second,) = await api.ops("alice", {**op, "client_meta": "ignored"})
    assert second == {**first, "status": "duplicate"}
    (conflict,) = await api.ops("alice", {**op, "body": "twice"})
    assert conflict["status"] == "rejected"
    assert (conflict["code"], conflict["status_code"]) == ("op_id_conflict", 409)
    assert len(api.state.all_messages(cid)) == 1
    # Issue 12: an op id names one operation of one user, whatever the device: the same op
    # from another device of alice is the same operation (a duplicate), never a second one.
    await api.login("alice", device="phone")
    other = await api.client.post("/v1/ops", json={"ops": [op]}, headers=api.auth("alice/phone"))
    assert other.json()["results"][0] == {**first, "status": "duplicate"}
    assert len(api.state.all_messages(cid)) == 1


async def test_rejections_are_recorded_and_replayed(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "x" * 16_001}
    (first,) = await api.ops("alice", op)
    assert (first["status"], first["code"], first["status_code"]) == ("rejected", "too_large", 413)
    (again,) = await api.ops("alice", op)
    assert again == first
    assert api.state.all_messages(cid) == []


async def test_a_rejected_op_does_not_stop_the_batch(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    results = await api.ops(
        "alice",
        {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "one"},
        {"op_id": new_id(), "kind": "send", "conversation_id": new_id(), "body": "nowhere"},
        {"op_id": new_id(), "kind": "frobnicate", "conversation_id": cid},
        {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": 5},
        {"op_id": new_id(), "kind": "edit", "conversation_id": cid, "body": "no target"},
        {"op_id": new_id(), "kind": "mark_read", "conversation_id": cid, "seq": 99},
        {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "x" * 16_000},
    )
    assert [(r["status"], r.get("code")) for r in results] == [
        ("applied", None),
        ("rejected", "not_found"),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("rejected", "invalid"),
        ("applied", None),
    ]
    assert [m["seq"] for m in api.state.all_messages(cid)] == [2, 3]


def _good(cid: str) -> dict[str, object]:
    return {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "ok"}


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda cid: {"ops": "nope"}, 422, "invalid"),
        (lambda cid: {"nothing": []}, 422, "invalid"),
        (lambda cid: {"ops": [_good(cid), {"kind": "send"}]}, 422, "invalid"),
        (lambda cid: {"ops": [_good(cid), 5]}, 422, "invalid"),
        (lambda cid: {"ops": [_good(cid), {**_good(cid), "op_id": ""}]}, 422, "invalid"),
        (lambda cid: {"ops": [_good(cid) for _ in range(501)]}, 413, "too_large"),
    ],
)
async def test_envelope_errors_apply_nothing(
    asgi_api: Api, make: Callable[[str], dict[str, object]], status: int, code: str
) -> None:
    cid = await asgi_api.create("alice", ["bob"])
    response = await asgi_api.client.post("/v1/ops", json=make(cid), headers=asgi_api.auth("alice"))
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert asgi_api.state.all_messages(cid) == []


async def test_a_full_batch_of_500_is_accepted(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    ops = [
        {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": f"m{i}"}
        for i in range(state.MAX_BATCH)
    ]
    results = await api.ops("alice", *ops)
    assert [r["seq"] for r in results] == list(range(2, 502))
    assert [m["body"] for m in api.state.all_messages(cid)] == [f"m{i}" for i in range(500)]


# --- pull ---------------------------------------------------------------------------------


async def test_pull_pages_follow_next(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    for i in range(7):
        await api.send("alice", cid, f"m{i}")
    page = await api.pull("bob", 0, limit=3)
    assert [e["pos"] for e in page["events"]] == [1, 2, 3]
    assert page["next"] == 3 and page["has_more"] is True
    rest = await api.pull_all("bob", page["next"])
    assert [e["pos"] for e in rest] == [4, 5, 6, 7, 8]
    last = await api.pull("bob", 8)
    assert last == {"events": [], "next": 8, "has_more": False, "epoch": api.state.epoch}
    decoded = wire.decode_page(
        (await api.client.get("/v1/events", params={"since": 0}, headers=api.auth("bob"))).content
    )
    assert [e.pos for e in decoded.events] == list(range(1, 9))  # type: ignore[attr-defined]


async def test_pull_limit_is_capped_and_validated(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    for _ in range(3):
        await api.ops(
            "alice",
            *[
                {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "x"}
                for _ in range(400)
            ],
        )
    page = await api.pull("alice", 0, limit=5000)
    assert len(page["events"]) == state.PULL_LIMIT_MAX and page["has_more"]
    default = await api.pull("alice", 0)
    assert len(default["events"]) == state.PULL_LIMIT_DEFAULT
    for params in ({"since": -1}, {"since": "x"}, {"limit": 0}, {"limit": "many"}):
        response = await api.client.get("/v1/events", params=params, headers=api.auth("alice"))
        assert response.status_code == 400 and response.json()["code"] == "bad_request"


async def test_pull_shows_only_events_while_a_member(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    await api.send("alice", cid, "before carol")
    await api.client.post(
        f"/v1/conversations/{cid}/members", json={"user": "carol"}, headers=api.auth("alice")
    )
    await api.send("alice", cid, "with carol")
    await api.client.delete(f"/v1/conversations/{cid}/members/carol", headers=api.auth("alice"))
    await api.send("alice", cid, "after carol")
    other = await api.create("bob", ["alice"])
    seen = await api.pull_all("carol")
    assert [(e["type"], e.get("body")) for e in seen] == [
        ("conversation_updated", None),
        ("message_received", "with carol"),
        ("conversation_updated", None),
    ]
    assert seen[-1]["members"] == ["alice", "bob"]
    assert all(e["conversation_id"] == cid for e in seen)
    assert len(await api.pull_all("bob")) == 7
    assert {e["conversation_id"] for e in await api.pull_all("alice")} == {cid, other}


async def test_pull_next_skips_invisible_events(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    for _ in range(5):
        await api.send("alice", cid)
    page = await api.pull("carol", 0)
    assert page == {"events": [], "next": 6, "has_more": False, "epoch": api.state.epoch}


async def test_pull_from_a_cursor_ahead_of_the_log_is_gone(api: Api) -> None:
    response = await api.client.get("/v1/events", params={"since": 5}, headers=api.auth("alice"))
    assert response.status_code == 410
    assert response.json()["code"] == "cursor_expired" and response.json()["oldest_pos"] == 1


async def test_retention_answers_410_with_oldest_pos(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, retention=5) as api:
        await api.login("alice")
        cid = await api.create("alice", [])
        for i in range(9):
            await api.send("alice", cid, f"m{i}")
        assert api.state.head == 10 and api.state.oldest_pos == 6
        gone = await api.client.get("/v1/events", params={"since": 4}, headers=api.auth("alice"))
        assert gone.status_code == 410
        assert gone.json() == {
            "code": "cursor_expired",
            "reason": gone.json()["reason"],
            "oldest_pos": 6,
        }
        page = await api.pull("alice", 5)
        assert [e["pos"] for e in page["events"]] == [6, 7, 8, 9, 10]
        # History is not limited by the retained log.
        response = await api.client.get(
            f"/v1/conversations/{cid}/messages", headers=api.auth("alice")
        )
        assert len(response.json()["messages"]) == 9


# --- history ------------------------------------------------------------------------------


async def test_history_pages_backwards_to_the_end(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    for i in range(5):
        await api.send("alice", cid, f"m{i}")
    url = f"/v1/conversations/{cid}/messages"
    latest = (await api.client.get(url, params={"limit": 2}, headers=api.auth("bob"))).json()
    assert [m["body"] for m in latest["messages"]] == ["m3", "m4"]
    assert latest["end_of_history"] is False
    older = (
        await api.client.get(
            url,
            params={"limit": 2, "before": latest["messages"][0]["seq"]},
            headers=api.auth("bob"),
        )
    ).json()
    assert [m["body"] for m in older["messages"]] == ["m1", "m2"]
    oldest = (
        await api.client.get(
            url, params={"limit": 2, "before": older["messages"][0]["seq"]}, headers=api.auth("bob")
        )
    ).json()
    assert [m["body"] for m in oldest["messages"]] == ["m0"] and oldest["end_of_history"]
    page = wire.decode_history((await api.client.get(url, headers=api.auth("bob"))).content)
    assert page.end_of_history and [m.body for m in page.messages] == [f"m{i}" for i in range(5)]
    exact = (await api.client.get(url, params={"limit": 5}, headers=api.auth("bob"))).json()
    assert exact["end_of_history"] is True
    bad = await api.client.get(url, params={"before": 0}, headers=api.auth("bob"))
    assert bad.status_code == 400


async def test_history_of_an_empty_conversation_ends_at_once(api: Api) -> None:
    cid = await api.create("alice", [])
    response = await api.client.get(f"/v1/conversations/{cid}/messages", headers=api.auth("alice"))
    assert response.json() == {"messages": [], "end_of_history": True}


# --- presence -----------------------------------------------------------------------------


async def test_presence_lists_users_sharing_a_conversation(api: Api) -> None:
    await api.create("alice", ["bob"])
    await api.login("dave")
    response = await api.client.get("/v1/presence", headers=api.auth("alice"))
    presence = response.json()["presence"]
    assert [p["user"] for p in presence] == ["alice", "bob"]
    assert all(p["status"] == "offline" for p in presence)
    alone = await api.client.get("/v1/presence", headers=api.auth("dave"))
    assert [p["user"] for p in alone.json()["presence"]] == ["dave"]  # the caller, always


# --- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{", b"[1, 2]", b"\xff\xfe", b'{"user": NaN}', b"[" * 100_000, b'{"a": "\\ud800"}', b""],
)
async def test_malformed_bodies_are_clean_4xx(asgi_api: Api, content: bytes) -> None:
    for path in ("/v1/login", "/v1/ops", "/v1/conversations"):
        response = await asgi_api.client.post(
            path,
            content=content,
            headers={**asgi_api.auth("alice"), "content-type": "application/json"},
        )
        assert response.status_code in (400, 422), (path, content[:10], response.text)
        assert set(response.json()) == {"code", "reason"}


async def test_request_body_limit_is_413(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, max_body_bytes=1000) as api:
        await api.login("alice")
        big = {
            "ops": [
                {"op_id": new_id(), "kind": "send", "conversation_id": new_id(), "body": "x" * 2000}
            ]
        }
        response = await api.client.post("/v1/ops", json=big, headers=api.auth("alice"))
        assert response.status_code == 413 and response.json()["code"] == "too_large"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 200

        streamed = await api.client.post("/v1/ops", content=chunks(), headers=api.auth("alice"))
        assert streamed.status_code == 413


async def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    missing = await api.client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = await api.client.put("/v1/events")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


# --- rate limits --------------------------------------------------------------------------


async def test_rest_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, rate_per_s=0.5, rate_burst=3) as api:
        await api.login("alice")
        await api.login("bob")
        statuses = []
        for _ in range(5):
            response = await api.client.get("/v1/conversations", headers=api.auth("alice"))
            statuses.append(response.status_code)
        assert statuses == [200, 200, 200, 429, 429]
        body = response.json()
        assert body["code"] == "rate_limited" and 0 < body["retry_after_ms"] <= 2000
        assert response.headers["Retry-After"] == str(math.ceil(body["retry_after_ms"] / 1000))
        # Per user: bob is not affected.
        other = await api.client.get("/v1/conversations", headers=api.auth("bob"))
        assert other.status_code == 200


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_pulls_draw_from_their_own_budget(tmp_path: Path, kind: str) -> None:
    # A catch-up asks for page after page: it must not spend (or be stopped by) the abuse
    # limit that every other request shares, and it has a limit of its own.
    async with open_api(kind, tmp_path, rate_per_s=0.5, rate_burst=3, pull_rate_per_s=0.5,
                        pull_burst=6) as api:  # fmt: skip
        await api.login("alice")
        pulls = [
            (await api.client.get("/v1/events", params={"since": 0},
                                  headers=api.auth("alice"))).status_code
            for _ in range(7)
        ]  # fmt: skip
        assert pulls == [200] * 6 + [429]
        rest = [
            (await api.client.get("/v1/conversations", headers=api.auth("alice"))).status_code
            for _ in range(4)
        ]
        assert rest == [200, 200, 200, 429]
        # The REST budget is empty, the pull budget refills on its own clock.
        again = await api.client.get("/v1/events", params={"since": 0}, headers=api.auth("alice"))
        assert again.status_code == 429 and again.json()["retry_after_ms"] <= 2000


async def test_login_rate_limit_per_user_name(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, login_rate_per_s=0.1, login_burst=2) as api:
        body = {"user": "alice", "password": "pw", "device": "d"}
        codes = [(await api.client.post("/v1/login", json=body)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        response = await api.client.post("/v1/login", json=body)
        assert int(response.headers["Retry-After"]) >= 1


# --- no input makes a 500 -----------------------------------------------------------------

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_OP_KEYS = ["op_id", "kind", "conversation_id", "body", "target_op_id", "message_id", "seq"]
_OPS = st.lists(
    st.dictionaries(
        st.sampled_from([*_OP_KEYS, "title", "members"]),
        _JSON | st.sampled_from(["send", "edit", "delete", "mark_read", "create_conversation"]),
    ),
    max_size=4,
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/login", "/v1/ops", "/v1/conversations", "/members", "/rename"]),
    body=_JSON | _OPS.map(lambda ops: {"ops": ops}),
    query=st.dictionaries(
        st.sampled_from(["since", "limit", "before"]),
        st.sampled_from(["0", "-1", str(1 << 63), str(1 << 70), "1e3", ""])
        | st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str)
        | st.text(max_size=5),
        max_size=1,  # one parameter at a time, so one bad value does not hide another
    ),
)
def test_no_input_makes_a_server_error(
    fuzz_app: tuple[Any, str, dict[str, str]], path: str, body: Any, query: dict[str, str]
) -> None:
    app, cid, headers = fuzz_app

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            url = {
                "/members": f"/v1/conversations/{cid}/members",
                "/rename": f"/v1/conversations/{cid}",
            }.get(path, path)
            method = "PATCH" if path == "/rename" else "POST"
            return [
                await client.request(method, url, json=body, headers=headers),
                await client.get("/v1/events", params=query, headers=headers),
                await client.get(
                    f"/v1/conversations/{cid}/messages", params=query, headers=headers
                ),
            ]

    for response in asyncio.run(run()):
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert set(response.json()) >= {"code", "reason"}


@pytest.fixture
def fuzz_app(tmp_path: Path) -> Iterator[tuple[Any, str, dict[str, str]]]:
    """An in-process app with alice logged in and one conversation (synchronous set-up)."""
    app = create_app(make_config(tmp_path, rate_per_s=1e6, rate_burst=1_000_000))
    core = app.state.core
    token = core.storage.issue_token("alice", "dev", 3600)
    cid = new_id()
    core.storage.create_conversation("alice", cid, "t", ("alice", "bob"))
    try:
        yield app, cid, {"Authorization": f"Bearer {token}"}
    finally:
        core.close()


async def test_a_client_leaving_mid_body_is_not_an_error(
    asgi_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    app = asgi_api.client._transport.app  # type: ignore[attr-defined]
    token = asgi_api.tokens["alice"].encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/ops",
        "raw_path": b"/v1/ops",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", b"Bearer " + token), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.DEBUG, logger="syncengine"):
        await app(scope, receive, send)
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_unknown_members_are_refused_per_operation(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, refuse_unknown_members=True) as api:
        await api.login("alice")
        await api.login("bob")
        cid, ok = new_id(), new_id()
        create = {"kind": "create_conversation", "title": "t"}
        results = await api.ops(
            "alice",
            {**create, "op_id": "o1", "conversation_id": cid, "members": ["bob", "nosuchuser"]},
            {**create, "op_id": "o2", "conversation_id": ok, "members": ["bob"]},
        )
        assert [(r["status"], r.get("code"), r.get("status_code")) for r in results] == [
            ("rejected", "unknown_user", 404),
            ("applied", None, None),
        ]
        assert "nosuchuser" in results[0]["reason"]
        assert api.state.snapshot(cid, "alice") is None  # nothing of the refused creation kept
        added = await api.client.post(
            f"/v1/conversations/{ok}/members", json={"user": "ghost"}, headers=api.auth("alice")
        )
        assert (added.status_code, added.json()["code"]) == (404, "unknown_user")
        assert api.state.members(ok) == ("alice", "bob")
        known = await api.client.post(
            f"/v1/conversations/{ok}/members", json={"user": "carol"}, headers=api.auth("alice")
        )
        assert known.status_code == 404  # carol has not registered yet
        await api.login("carol")
        known = await api.client.post(
            f"/v1/conversations/{ok}/members", json={"user": "carol"}, headers=api.auth("alice")
        )
        assert known.status_code == 200 and api.state.members(ok) == ("alice", "bob", "carol")


async def test_member_operations_are_idempotent_and_refused_per_operation(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, refuse_unknown_members=True) as api:
        for user in ("alice", "bob", "carol"):
            await api.login(user)
        cid = await api.create("alice", ["bob"])
        head = api.state.head

        def op(op_id: str, kind: str, user: str) -> dict[str, Any]:
            return {"op_id": op_id, "kind": kind, "conversation_id": cid, "user": user}

        results = await api.ops(
            "alice",
            op("a1", "add_member", "carol"),
            op("a2", "add_member", "carol"),  # already a member: no event
            op("a3", "add_member", "ghost"),
            op("r1", "remove_member", "bob"),
        )
        assert [(r["status"], r.get("code")) for r in results] == [
            ("applied", None),
            ("applied", None),
            ("rejected", "unknown_user"),
            ("applied", None),
        ]
        assert results[0]["pos"] == head + 1 and results[3]["pos"] == head + 2
        assert results[1].get("pos") is None
        assert api.state.members(cid) == ("alice", "carol")
        again = await api.ops("alice", op("a1", "add_member", "carol"))
        assert again[0]["status"] == "duplicate" and again[0]["pos"] == head + 1
        assert api.state.head == head + 2  # a replay appends nothing
        outsider = await api.ops("bob", op("b1", "add_member", "bob"))
        assert (outsider[0]["status"], outsider[0]["code"]) == ("rejected", "not_found")
