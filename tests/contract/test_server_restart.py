"""The server killed (SIGKILL) and restarted twice: mid-pull of a 1,000-event backlog and
mid-push of a burst (G2, G3, G4).

The server runs as a subprocess (``syncengine serve --port 0``) so that it can really be
killed; each restart comes back on a new port and the fault proxy switches its upstream to it,
so the engines keep one server URL. Oracle: lost 0, duplicated 0, unexpected 0, both stores
converge to the server's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from syncengine.server.storage import Storage
from tests.contract.oracle import TIME_FACTOR, Oracle, eventually, scale
from tests.contract.proxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def count_messages(db: Path, cid: str) -> int:
    """The server's message count of ``cid``, read-only (the server keeps running)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            conn.execute(
                "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (cid,)
            ).fetchone()[0]
        )
    except sqlite3.OperationalError:
        return -1
    finally:
        conn.close()


@pytest.fixture
async def restart_proxy(server_process: Any) -> Any:
    async with FaultProxy(server_process.port) as p:
        yield p


@pytest.mark.timeout(900 if scale(1) > 1 else 240)
async def test_server_killed_mid_pull_and_mid_push(
    tmp_path: Path, server_process: Any, restart_proxy: FaultProxy, seed: int
) -> None:
    from syncengine import SyncEngine
    from syncengine.models import ConnectionState
    from tests.conftest import FAST

    rng = random.Random(seed)
    proxy = restart_proxy
    oracle = Oracle("server-restart", seed)
    backlog, burst = scale(1000), scale(300)
    db = server_process.data_dir / "server.sqlite3"
    opened: list[SyncEngine] = []

    async def engine(user: str, **options: Any) -> SyncEngine:
        e = SyncEngine(tmp_path / f"{user}.db", **{**FAST, **options})
        await e.open()
        opened.append(e)
        if e.store.user != user:
            await e.login(proxy.url, user, f"{user}-password")
        return e

    async def kill_and_restart(what: str) -> None:
        await server_process.kill()
        proxy.cut()  # a killed server's sockets die with it
        oracle.fault(f"server kill -9 {what}")
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        proxy.switch(await server_process.start())

    try:
        alice = await engine("alice", push_batch=25)
        bob = await engine("bob", page_size=50)
        assert await bob.wait_for_state(ConnectionState.LIVE, 10 * TIME_FACTOR)
        cid = (await alice.create_conversation("Restarts", members=["bob"])).id
        await eventually(lambda: bob.store.has_conversation(cid), what="bob sees the chat")
        await bob.close()  # offline while the backlog piles up

        for i in range(backlog):
            await oracle.send(alice, cid, f"backlog {i}")
        assert await alice.wait_for_pending(60 * TIME_FACTOR)

        # 1. Killed mid-pull: bob catches up 50 events a page through a slow proxy.
        proxy.set_delay(0.02)
        bob = await engine("bob", page_size=50)
        await eventually(lambda: bob.store.message_count(cid) >= backlog // 5, what="mid-pull")
        at_kill = bob.store.message_count(cid)
        await kill_and_restart("mid-pull")
        oracle.extra["pull_kill_at"] = f"{at_kill}/{backlog}"
        assert at_kill < backlog, "the kill came after the pull ended"

        # 2. Killed mid-push: a burst pushed 25 per request through the slow proxy.
        base = count_messages(db, cid)
        for i in range(burst):
            await oracle.send(alice, cid, f"burst {i}")
        await eventually(lambda: count_messages(db, cid) >= base + burst // 4, what="mid-push")
        await kill_and_restart("mid-push")
        pushed = count_messages(db, cid) - base
        oracle.extra["push_kill_at"] = f"{pushed}/{burst}"
        assert pushed < burst, "the kill came after the push ended"
        for i in range(burst // 10):  # the app keeps sending across the restart
            await oracle.send(alice, cid, f"after {i}")
        proxy.heal()
        oracle.healed()

        truth = Storage(db)
        try:
            fig = await oracle.converge(
                lambda: {cid: truth.all_messages(cid)},
                {"alice": (alice.store, [cid]), "bob": (bob.store, [cid])},
                timeout=60 * TIME_FACTOR,
                until_acked=lambda: alice.store.health().pending == 0,
            )
        finally:
            truth.close()
        oracle.assert_ok(fig)
        assert fig.messages == backlog + burst + burst // 10
    finally:
        for e in opened:
            with contextlib.suppress(Exception):
                await e.close()
