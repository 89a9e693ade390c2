"""Two nodes on one PostgreSQL database are one server (issue 16).

Tokens from one node work on the other; a message sent through one node reaches a live
client of the other, in pos order; typing and presence cross nodes; a missed notification
loses nothing; rate limits hold across nodes; and concurrent writers on two nodes never let
a pull skip a position that commits later.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import orjson
import pytest

from syncengine.models import new_id
from syncengine.server import writes
from syncengine.server.storage.postgres import PostgresStorage
from tests.conftest_server import live, next_frame
from tests.contract.oracle import eventually

pytestmark = [pytest.mark.integration]


async def login(client: httpx.AsyncClient, url: str, user: str) -> str:
    r = await client.post(
        url + "/v1/login", json={"user": user, "password": "pw-" + user, "device": "d"}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


async def test_a_message_sent_on_one_node_reaches_a_live_client_of_the_other(nodes: Any) -> None:
    a, b = await nodes(2)
    async with httpx.AsyncClient() as client:
        alice = await login(client, a.url, "alice")
        bob = await login(client, b.url, "bob")
        auth = {"Authorization": f"Bearer {alice}"}
        # alice's token, issued by node A, is accepted by node B (tokens live in the database)
        cid = new_id()
        r = await client.post(
            b.url + "/v1/conversations",
            json={"id": cid, "title": "x", "members": ["bob"]},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        ws_bob, _ready = await live(b.ws_url, bob)
        ws_alice, _ = await live(a.ws_url, alice)
        try:
            # presence: alice connected on A; bob, on B, is told
            frame = await next_frame(ws_bob, "presence_changed")
            while frame["user"] != "alice":  # bob's own presence comes first
                frame = await next_frame(ws_bob, "presence_changed")
            assert frame["status"] == "online"
            positions = []
            for i in range(20):
                op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": f"m{i}"}
                node = a if i % 2 == 0 else b  # alternate nodes: both write the log
                r = await client.post(node.url + "/v1/ops", json={"ops": [op]}, headers=auth)
                assert r.json()["results"][0]["status"] == "applied"
            while len(positions) < 20:
                frame = await next_frame(ws_bob, "message_received")
                positions.append(frame["pos"])
            assert positions == sorted(positions) and len(set(positions)) == 20
            # typing on A reaches bob on B
            await ws_alice.send(orjson.dumps({"type": "typing", "conversation_id": cid, "typing": True}).decode())
            frame = await next_frame(ws_bob, "typing_started")
            assert (frame["user"], frame["conversation_id"]) == ("alice", cid)
            # presence over REST on B knows alice is online on A
            r = await client.get(
                b.url + "/v1/presence", headers={"Authorization": f"Bearer {bob}"}
            )
            status = {p["user"]: p["status"] for p in r.json()["presence"]}
            assert status["alice"] == "online"
        finally:
            await ws_bob.close()
            await ws_alice.close()


async def test_a_missed_notification_loses_nothing(nodes: Any) -> None:
    a, b = await nodes(2)
    hub_b = b.core.hub
    hub_b._on_notify = lambda channel, payload: None  # B hears nothing from now on
    async with httpx.AsyncClient() as client:
        alice = await login(client, a.url, "alice")
        bob = await login(client, b.url, "bob")
        cid = new_id()
        r = await client.post(
            a.url + "/v1/conversations",
            json={"id": cid, "title": "x", "members": ["bob"]},
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert r.status_code == 201
        ws_bob, _ = await live(b.ws_url, bob)
        try:
            op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "quiet"}
            r = await client.post(
                a.url + "/v1/ops", json={"ops": [op]}, headers={"Authorization": f"Bearer {alice}"}
            )
            assert r.status_code == 200
            # the timer (cluster_catchup_s = 0.5 s) reads the table: bob gets it anyway
            frame = await next_frame(ws_bob, "message_received", timeout=5)
            assert frame["body"] == "quiet"
            assert hub_b.stats["catchups"] >= 1
        finally:
            await ws_bob.close()


async def test_rate_limits_hold_across_nodes(nodes: Any) -> None:
    a, b = await nodes(2, rate_per_s=0.1, rate_burst=6)
    async with httpx.AsyncClient() as client:
        token = await login(client, a.url, "alice")
        auth = {"Authorization": f"Bearer {token}"}
        codes = []
        for i in range(8):
            node = a if i % 2 == 0 else b
            codes.append((await client.get(node.url + "/v1/conversations", headers=auth)).status_code)
        # one budget of 6 for both nodes (per node it would have been 4 + 4, all allowed)
        assert codes[:6] == [200] * 6 and codes[6:] == [429, 429]


def test_concurrent_writers_on_two_nodes_never_let_a_pull_skip_a_position(database: str) -> None:
    """Two storages (two nodes) append as fast as they can while a third pulls in a loop:
    every page the reader gets continues exactly where the last ended (no pos is skipped
    and found committed later)."""
    setup = PostgresStorage(database)
    cids = []
    for _ in range(2):
        cid = new_id()
        with setup.write() as tx:
            writes.create_conversation(tx, "alice", cid, "t", ("alice",))
        cids.append(cid)
    writers = [PostgresStorage(database), PostgresStorage(database)]
    reader = PostgresStorage(database)
    per_writer = 150
    done = threading.Event()
    errors: list[BaseException] = []

    def write(storage: PostgresStorage, cid: str) -> None:
        try:
            for i in range(per_writer):
                op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": f"{i}"}
                with storage.write() as tx:
                    writes.apply_op(tx, "alice", "d", op)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    seen: list[int] = []
    cursor = 0
    threads = [threading.Thread(target=write, args=(w, c)) for w, c in zip(writers, cids, strict=True)]
    for t in threads:
        t.start()
    try:
        for _ in range(100_000):  # bounded
            page, nxt, _more = reader.pull("alice", cursor, 7)
            seen.extend(orjson.loads(e)["pos"] for e in page)
            cursor = nxt
            if done.is_set() and cursor == reader.head:
                break
            if not any(t.is_alive() for t in threads):
                done.set()
    finally:
        for t in threads:
            t.join(timeout=60)
        for s in (setup, reader, *writers):
            s.close()
    assert not errors, errors
    total = 2 + 2 * per_writer
    assert seen == list(range(1, total + 1))


async def test_a_node_started_later_serves_the_whole_log(nodes: Any) -> None:
    (a,) = await nodes(1)
    async with httpx.AsyncClient() as client:
        token = await login(client, a.url, "alice")
        auth = {"Authorization": f"Bearer {token}"}
        cid = new_id()
        await client.post(
            a.url + "/v1/conversations", json={"id": cid, "title": "x", "members": []}, headers=auth
        )
        (b,) = await nodes(1)
        r = await client.get(b.url + "/v1/events", params={"since": 0}, headers=auth)
        assert [e["pos"] for e in r.json()["events"]] == [1]
        await eventually(lambda: a.core.hub.relayed == b.core.storage.head, timeout=2)
        await asyncio.sleep(0)


async def test_failed_login_and_registration_limits_hold_across_nodes(nodes: Any) -> None:
    """Issue 13: the per-address limits are one budget for the cluster, and wrong passwords
    hammered through both nodes never refuse the victim's right one from its own address."""
    a, b = await nodes(2, login_fail_burst=3, register_burst=2)
    attacker = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient() as victim, httpx.AsyncClient(transport=attacker) as bad:
        await login(victim, a.url, "victim")
        codes = []
        for i in range(6):
            node = (a, b)[i % 2]
            body = {"user": "victim", "password": f"wrong{i}", "device": "d"}
            codes.append((await bad.post(node.url + "/v1/login", json=body)).status_code)
        assert codes == [401, 401, 401, 429, 429, 429]
        await login(victim, b.url, "victim")  # the right password, from its own address
        fresh = []
        for i in range(3):
            node = (a, b)[i % 2]
            body = {"user": f"fresh{i}", "password": "pw", "device": "d"}
            fresh.append((await bad.post(node.url + "/v1/login", json=body)).status_code)
        assert fresh == [200, 200, 429]


async def test_a_block_made_on_one_node_holds_on_the_other(nodes: Any) -> None:
    a, b = await nodes(2)
    async with httpx.AsyncClient() as client:
        bob = await login(client, a.url, "bob")
        mallory = await login(client, b.url, "mallory")
        r = await client.put(
            a.url + "/v1/blocks/mallory", headers={"Authorization": f"Bearer {bob}"}
        )
        assert r.json() == {"blocked": ["mallory"]}
        r = await client.post(
            b.url + "/v1/conversations",
            json={"id": new_id(), "title": "x", "members": ["bob"]},
            headers={"Authorization": f"Bearer {mallory}"},
        )
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
