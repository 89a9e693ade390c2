"""The live channel on a real uvicorn: ordering, typing, presence, limits, heartbeats."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

try:
    from conftest_server import Api, live, next_frame, open_api
except ModuleNotFoundError:  # tests/ is a package
    from tests.conftest_server import Api, live, next_frame, open_api

from syncengine.models import new_id

pytestmark = pytest.mark.timeout(30)

FAST_LIVE = {"typing_ttl_s": 0.3, "presence_leave_s": 0.3}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """A uvicorn server with alice and bob logged in and fast ephemeral timers."""
    async with open_api("uvicorn", tmp_path, **FAST_LIVE) as api:
        await api.login("alice")
        await api.login("bob")
        yield api


def _url(api: Api) -> str:
    assert api.server is not None
    return api.server.ws_url


async def _closed(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def _durable(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` durable events (ephemeral frames are skipped)."""
    out = []
    while len(out) < count:
        frame = json.loads(await ws.recv())
        if "pos" in frame:
            out.append(frame)
    return out


async def test_ready_announces_the_head_and_only_later_events_follow(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    await api.send("alice", cid, "before")
    async with asyncio.timeout(10):
        ws, ready = await live(_url(api), api.tokens["bob"])
        assert ready == {
            "type": "ready",
            "user": "bob",
            "device": "dev",
            "head": 2,
            "epoch": api.state.epoch,
        }
        await api.send("alice", cid, "after")
        (event,) = await _durable(ws, 1)
        assert (event["pos"], event["seq"], event["body"]) == (3, 3, "after")
        await ws.close()


async def test_delivery_is_in_pos_order_and_matches_pull(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    other = await api.create("bob", ["alice"])
    await api.login("alice", device="phone")
    async with asyncio.timeout(20):
        ws, ready = await live(_url(api), api.tokens["bob"])

        async def writer(who: str, conv: str, n: int) -> None:
            for i in range(n):
                ops = [
                    {"op_id": new_id(), "kind": "send", "conversation_id": conv, "body": f"{i}"}
                    for _ in range(1 + i % 3)
                ]
                response = await api.client.post(
                    "/v1/ops", json={"ops": ops}, headers=api.auth(who)
                )
                assert response.status_code == 200

        await asyncio.gather(
            writer("alice", cid, 15), writer("alice/phone", other, 15), writer("bob", cid, 15)
        )
        pulled = await api.pull_all("bob", ready["head"])
        received = await _durable(ws, len(pulled))
        positions = [e["pos"] for e in received]
        assert positions == sorted(set(positions))
        assert received == pulled
        for conv in (cid, other):
            seqs = [e["seq"] for e in received if e["conversation_id"] == conv]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        await ws.close()


async def test_typing_reaches_others_and_expires(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    async with asyncio.timeout(10):
        alice, _ = await live(_url(api), api.tokens["alice"])
        bob, _ = await live(_url(api), api.tokens["bob"])
        await bob.send(json.dumps({"type": "typing", "conversation_id": cid, "typing": True}))
        started = await next_frame(alice, "typing_started")
        assert (started["user"], started["conversation_id"], started["ttl_ms"]) == ("bob", cid, 300)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        stopped = await next_frame(alice, "typing_stopped")
        assert stopped["user"] == "bob" and 0.2 < loop.time() - t0 < 3.0
        assert stopped["ts_ms"] >= started["ts_ms"]
        # The typist is not told about their own typing.
        await api.send("alice", cid, "marker")
        assert (await next_frame(bob, "typing_started", "message_received"))["body"] == "marker"
        await alice.close()
        await bob.close()


async def test_typing_stops_on_request_and_on_disconnect(tmp_path: Path) -> None:
    # A long TTL: every stop seen here comes from the request or the disconnect.
    async with open_api("uvicorn", tmp_path, typing_ttl_s=30) as api:
        await api.login("alice")
        await api.login("bob")
        cid = await api.create("alice", ["bob"])
        async with asyncio.timeout(10):
            alice, _ = await live(_url(api), api.tokens["alice"])
            bob, _ = await live(_url(api), api.tokens["bob"])
            typing = {"type": "typing", "conversation_id": cid, "typing": True}
            await bob.send(json.dumps(typing))
            await next_frame(alice, "typing_started")
            await bob.send(json.dumps({**typing, "typing": False}))
            await next_frame(alice, "typing_stopped")
            await bob.send(json.dumps(typing))
            await next_frame(alice, "typing_started")
            await bob.close()
            stopped = await next_frame(alice, "typing_stopped", timeout=5)
            assert stopped["user"] == "bob"
            await alice.close()


async def _presence_of(ws: ClientConnection, user: str) -> dict[str, Any]:
    """The next presence change of ``user`` (a connection also hears its own)."""
    while True:
        frame = await next_frame(ws, "presence_changed")
        if frame["user"] == user:
            return frame


async def test_presence_is_debounced_across_reconnects(api: Api) -> None:
    await api.create("alice", ["bob"])
    async with asyncio.timeout(10):
        alice, _ = await live(_url(api), api.tokens["alice"])
        bob, _ = await live(_url(api), api.tokens["bob"])
        online = await _presence_of(alice, "bob")
        assert (online["user"], online["status"]) == ("bob", "online")
        # A quick reconnect does not flap.
        await bob.close()
        bob, _ = await live(_url(api), api.tokens["bob"])
        await bob.send(json.dumps({"type": "presence", "status": "away"}))
        away = await _presence_of(alice, "bob")
        assert (away["user"], away["status"]) == ("bob", "away")
        await asyncio.sleep(0.4)
        await bob.close()
        closed_at = asyncio.get_running_loop().time()
        offline = await _presence_of(alice, "bob")
        assert (offline["user"], offline["status"]) == ("bob", "offline")
        assert asyncio.get_running_loop().time() - closed_at >= 0.25
        assert offline["last_seen_ms"] <= offline["ts_ms"] - 250
        presence = (await api.client.get("/v1/presence", headers=api.auth("alice"))).json()
        assert {p["user"]: p["status"] for p in presence["presence"]} == {
            "alice": "online",
            "bob": "offline",
        }
        await alice.close()


async def test_presence_frames_are_validated(api: Api) -> None:
    async with asyncio.timeout(5):
        ws, _ = await live(_url(api), api.tokens["alice"])
        await ws.send(json.dumps({"type": "presence", "status": "offline"}))
        error = await next_frame(ws, "error")
        assert error["code"] == "invalid"
        await ws.close()


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"type": "dance"}',
        '{"no_type": 1}',
        '{"type": "typing", "conversation_id": 5, "typing": true}',
        '{"type": "typing", "conversation_id": "x", "typing": "yes"}',
        '{"a": NaN}',
        b"\x00\x01binary",
    ],
)
async def test_malformed_frames_get_an_error_and_the_link_survives(
    api: Api, frame: str | bytes
) -> None:
    cid = await api.create("alice", ["bob"])
    async with asyncio.timeout(5):
        ws, _ = await live(_url(api), api.tokens["bob"])
        await ws.send(frame)
        error = await next_frame(ws, "error")
        assert error["code"] == "invalid" and error["reason"]
        await api.send("alice", cid, "still here")
        assert (await next_frame(ws, "message_received"))["body"] == "still here"
        await ws.close()


async def test_oversized_frames_close_with_1009(api: Api) -> None:
    async with asyncio.timeout(5):
        ws, _ = await live(_url(api), api.tokens["bob"], max_size=None)
        await ws.send(json.dumps({"type": "presence", "status": "away", "pad": "x" * 70_000}))
        code, _reason = await _closed(ws)
        assert code == 1009


async def test_frame_floods_are_rate_limited_then_closed(tmp_path: Path) -> None:
    limits = {"ws_rate_per_s": 0.5, "ws_burst": 2, "ws_flood_limit": 4}
    async with open_api("uvicorn", tmp_path, **limits) as api:
        await api.login("alice")
        async with asyncio.timeout(5):
            ws, _ = await live(_url(api), api.tokens["alice"])
            for _ in range(3):
                await ws.send(json.dumps({"type": "presence", "status": "away"}))
            error = await next_frame(ws, "error")
            assert error["code"] == "rate_limited" and 0 < error["retry_after_ms"] <= 2000
            for _ in range(5):
                await ws.send(json.dumps({"type": "presence", "status": "online"}))
            assert await _closed(ws) == (1008, "rate_limited")


async def test_a_reader_too_slow_is_closed_with_1013(tmp_path: Path) -> None:
    async with open_api("uvicorn", tmp_path, ws_send_queue=5) as api:
        await api.login("alice")
        cid = await api.create("alice", [])
        async with asyncio.timeout(5):
            ws, _ = await live(_url(api), api.tokens["alice"])
            ops = [
                {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "x"}
                for _ in range(20)
            ]
            await api.ops("alice", *ops)
            code, reason = await _closed(ws)
        assert (code, reason) == (1013, "send queue overflow")
        assert len(api.state.all_messages(cid)) == 20


async def test_injected_drops_and_restarts_close_with_1012(api: Api) -> None:
    cid = await api.create("alice", ["bob"])
    assert api.server is not None
    async with asyncio.timeout(10):
        ws, _ = await live(_url(api), api.tokens["bob"])
        assert api.server.drop_live_connections() == 1
        assert (await _closed(ws))[0] == 1012
        ws, _ = await live(_url(api), api.tokens["bob"])
        api.server.faults.drop_rate = 1.0
        await api.send("alice", cid)
        assert (await _closed(ws))[0] == 1012
        assert api.server.faults.injected["drop"] >= 1
        api.server.faults.clear()
        ws, _ = await live(_url(api), api.tokens["bob"])
        await api.server.stop()
        assert (await _closed(ws))[0] == 1012


async def test_the_server_pings_and_drops_a_silent_peer(tmp_path: Path) -> None:
    """A half-open peer (it never answers pings) is closed after ping interval + timeout."""
    async with open_api("uvicorn", tmp_path, ws_ping_interval_s=0.2, ws_ping_timeout_s=0.3) as api:
        token = await api.login("alice")
        protocol = ClientProtocol(parse_uri(_url(api)))
        assert api.server is not None
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
            protocol.send_request(protocol.connect())
            for data in protocol.data_to_send():
                writer.write(data)
            frames: list[Frame] = []
            authenticated = False
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                protocol.receive_data(data)
                frames.extend(e for e in protocol.events_received() if isinstance(e, Frame))
                pending = protocol.data_to_send()  # pongs: dropped, they never leave
                if not authenticated and protocol.state is State.OPEN:
                    protocol.send_text(json.dumps({"type": "auth", "token": token}).encode())
                    writer.write(b"".join(protocol.data_to_send()))
                    authenticated = True
                    assert pending == []
            writer.close()
        opcodes = [f.opcode for f in frames]
        assert Opcode.PING in opcodes
        assert opcodes[-1] is Opcode.CLOSE
