"""The authorization matrix: every endpoint and the live channel, for each kind of caller.

Identities: a member, a non-member, no token, a bad token, a malformed header and an
expired token. Non-members get 404 (never a hint that the conversation exists) and never see
its events; every credential problem is ``401 unauthorized``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

try:
    from conftest_server import TRANSPORTS, Api, live, next_frame, open_api
except ModuleNotFoundError:  # tests/ is a package
    from tests.conftest_server import TRANSPORTS, Api, live, next_frame, open_api

from syncengine.models import new_id

pytestmark = pytest.mark.timeout(30)

BAD_CREDENTIALS = ["none", "bad", "malformed", "expired"]


def _expire(api: Api, token: str) -> None:
    """Make a token expired, as if its TTL had run out."""
    api.state.conn.execute(
        "UPDATE tokens SET expires_ms = 0 WHERE token_hash = ?",
        (hashlib.sha256(token.encode()).hexdigest(),),
    )


@pytest.fixture(params=TRANSPORTS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """alice and bob share a conversation with one message; carol is not in it."""
    async with open_api(request.param, tmp_path) as api:
        await api.login("alice")
        await api.login("bob")
        await api.login("carol")
        expired = await api.login("alice", device="old")
        _expire(api, expired)
        cid = await api.create("alice", ["bob"])
        sent = await api.send("alice", cid, "secret")
        headers = {
            "member": api.auth("bob"),
            "non_member": api.auth("carol"),
            "none": {},
            "bad": {"Authorization": "Bearer " + "x" * 43},
            "malformed": {"Authorization": "Basic " + api.tokens["alice"]},
            "expired": {"Authorization": f"Bearer {expired}"},
        }
        yield {"api": api, "cid": cid, "message_id": sent["message_id"], "headers": headers}


async def _call(api: Api, endpoint: str, cid: str, headers: dict[str, str]) -> Any:
    client = api.client
    if endpoint == "list":
        return await client.get("/v1/conversations", headers=headers)
    if endpoint == "create":
        body = {"id": new_id(), "title": "x", "members": []}
        return await client.post("/v1/conversations", json=body, headers=headers)
    if endpoint == "rename":
        return await client.patch(f"/v1/conversations/{cid}", json={"title": "x"}, headers=headers)
    if endpoint == "add":
        return await client.post(
            f"/v1/conversations/{cid}/members", json={"user": "dave"}, headers=headers
        )
    if endpoint == "remove":
        return await client.delete(f"/v1/conversations/{cid}/members/alice", headers=headers)
    if endpoint == "history":
        return await client.get(f"/v1/conversations/{cid}/messages", headers=headers)
    if endpoint == "ops":
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "intruder"}
        return await client.post("/v1/ops", json={"ops": [op]}, headers=headers)
    if endpoint == "events":
        return await client.get("/v1/events", params={"since": 0}, headers=headers)
    assert endpoint == "presence"
    return await client.get("/v1/presence", headers=headers)


ENDPOINTS = ["list", "create", "rename", "add", "remove", "history", "ops", "events", "presence"]


def _check_non_member(endpoint: str, response: Any) -> None:
    body = response.json()
    if endpoint in ("rename", "add", "remove", "history"):
        assert response.status_code == 404 and body["code"] == "not_found"
        assert body["reason"] == "no such conversation"
    elif endpoint == "ops":
        (result,) = body["results"]
        assert (result["status"], result["code"], result["status_code"]) == (
            "rejected",
            "not_found",
            404,
        )
    elif endpoint == "list":
        assert body["conversations"] == []
    elif endpoint == "events":
        assert body["events"] == [] and body["has_more"] is False
    elif endpoint == "presence":  # carol sees herself, no one of the conversation
        assert [p["user"] for p in body["presence"]] == ["carol"]
    else:
        assert response.status_code == 201
    assert "secret" not in response.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_authorization_matrix(world: dict[str, Any], endpoint: str) -> None:
    api: Api = world["api"]
    cid = world["cid"]
    before = api.state.all_events()
    for who in BAD_CREDENTIALS:
        response = await _call(api, endpoint, cid, world["headers"][who])
        assert response.status_code == 401, (who, response.text)
        assert response.json()["code"] == "unauthorized"
    assert api.state.all_events() == before

    _check_non_member(endpoint, await _call(api, endpoint, cid, world["headers"]["non_member"]))
    assert [e for e in api.state.all_events() if e["conversation_id"] == cid] == before

    response = await _call(api, endpoint, cid, world["headers"]["member"])
    assert response.status_code == (201 if endpoint == "create" else 200), response.text
    if endpoint == "ops":
        assert response.json()["results"][0]["status"] == "applied"
    if endpoint in ("rename", "add", "remove", "ops"):
        assert len([e for e in api.state.all_events() if e["conversation_id"] == cid]) == 3


async def test_an_unknown_conversation_looks_like_a_foreign_one(world: dict[str, Any]) -> None:
    api: Api = world["api"]
    unknown = new_id()
    for endpoint in ("rename", "add", "remove", "history"):
        foreign = await _call(api, endpoint, world["cid"], world["headers"]["non_member"])
        missing = await _call(api, endpoint, unknown, world["headers"]["member"])
        garbage = await _call(api, endpoint, "..%2F..%2Fetc", world["headers"]["member"])
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json() == missing.json()
        assert garbage.status_code == 404


async def test_a_removed_member_loses_access(world: dict[str, Any]) -> None:
    api: Api = world["api"]
    cid = world["cid"]
    bob = world["headers"]["member"]
    await api.client.delete(f"/v1/conversations/{cid}/members/bob", headers=api.auth("alice"))
    await api.send("alice", cid, "after bob left")
    assert (await _call(api, "history", cid, bob)).status_code == 404
    events = (await _call(api, "events", cid, bob)).json()["events"]
    assert events[-1]["type"] == "conversation_updated" and "bob" not in events[-1]["members"]
    assert "after bob left" not in json.dumps(events)
    (result,) = (await _call(api, "ops", cid, bob)).json()["results"]
    assert result["code"] == "not_found"


async def test_tokens_expire_after_their_ttl(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, token_ttl_s=0.5) as api:
        token = await api.login("alice")
        response = await api.client.post(
            "/v1/login", json={"user": "x", "password": "p", "device": "d"}
        )
        assert response.json()["expires_in_s"] == 1
        ok = await api.client.get("/v1/conversations", headers=api.auth("alice"))
        assert ok.status_code == 200
        await asyncio.sleep(0.6)
        gone = await api.client.get(
            "/v1/conversations", headers={"Authorization": f"Bearer {token}"}
        )
        assert gone.status_code == 401 and gone.json()["code"] == "unauthorized"


# --- the live channel ---------------------------------------------------------------------


@pytest.fixture
async def uvicorn_world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with open_api("uvicorn", tmp_path, ws_auth_timeout_s=0.3) as api:
        await api.login("alice")
        await api.login("bob")
        await api.login("carol")
        expired = await api.login("alice", device="old")
        _expire(api, expired)
        cid = await api.create("alice", ["bob"])
        assert api.server is not None
        yield {"api": api, "cid": cid, "url": api.server.ws_url, "expired": expired}


@pytest.mark.parametrize(
    "first_frame",
    [
        "bad",
        "expired",
        '{"type": "auth"}',
        '{"type": "auth", "token": 5}',
        '{"type": "hello", "token": "TOKEN"}',
        "not json",
        b"binary",
    ],
)
async def test_live_refuses_bad_credentials_with_1008(
    uvicorn_world: dict[str, Any], first_frame: str | bytes
) -> None:
    api: Api = uvicorn_world["api"]
    if first_frame == "bad":
        first_frame = json.dumps({"type": "auth", "token": "x" * 43})
    elif first_frame == "expired":
        first_frame = json.dumps({"type": "auth", "token": uvicorn_world["expired"]})
    elif isinstance(first_frame, str):
        first_frame = first_frame.replace("TOKEN", api.tokens["alice"])
    async with asyncio.timeout(5), connect(uvicorn_world["url"], compression=None) as ws:
        await ws.send(first_frame)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "unauthorized")


async def test_live_without_an_auth_frame_is_closed(uvicorn_world: dict[str, Any]) -> None:
    async with asyncio.timeout(5), connect(uvicorn_world["url"], compression=None) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "unauthorized")


async def test_live_never_delivers_a_foreign_conversation(uvicorn_world: dict[str, Any]) -> None:
    api: Api = uvicorn_world["api"]
    cid = uvicorn_world["cid"]
    async with asyncio.timeout(10):
        carol, _ = await live(uvicorn_world["url"], api.tokens["carol"])
        bob, _ = await live(uvicorn_world["url"], api.tokens["bob"])
        await api.send("alice", cid, "for members only")
        await bob.send(json.dumps({"type": "typing", "conversation_id": cid, "typing": True}))
        await next_frame(bob, "message_received")
        own = await api.create("carol", [])
        await api.send("carol", own, "marker")
        frame = await next_frame(carol, "message_received", "typing_started")
        assert frame["conversation_id"] == own and frame["body"] == "marker"
        await carol.close()
        await bob.close()


async def test_live_typing_in_a_foreign_conversation_closes_1008(
    uvicorn_world: dict[str, Any],
) -> None:
    api: Api = uvicorn_world["api"]
    async with asyncio.timeout(5):
        carol, _ = await live(uvicorn_world["url"], api.tokens["carol"])
        await carol.send(
            json.dumps({"type": "typing", "conversation_id": uvicorn_world["cid"], "typing": True})
        )
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await carol.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "not_a_member")


async def test_live_stops_delivering_after_removal(uvicorn_world: dict[str, Any]) -> None:
    api: Api = uvicorn_world["api"]
    cid = uvicorn_world["cid"]
    async with asyncio.timeout(10):
        bob, _ = await live(uvicorn_world["url"], api.tokens["bob"])
        await api.client.delete(f"/v1/conversations/{cid}/members/bob", headers=api.auth("alice"))
        await api.send("alice", cid, "after bob left")
        own = await api.create("bob", [])
        await api.send("bob", own, "marker")
        removal = await next_frame(bob, "conversation_updated")
        assert removal["conversation_id"] == cid and "bob" not in removal["members"]
        frame = await next_frame(bob, "message_received")
        assert frame["body"] == "marker"
        await bob.close()


async def test_live_connection_closes_when_its_token_expires(tmp_path: Path) -> None:
    async with open_api("uvicorn", tmp_path, token_ttl_s=0.6) as api:
        token = await api.login("alice")
        assert api.server is not None
        async with asyncio.timeout(5):
            ws, _ = await live(api.server.ws_url, token)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "unauthorized")
