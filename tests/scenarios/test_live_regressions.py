"""Issue 12, case 7: tests that would have caught what the field saw, each with the real
server on 127.0.0.1.

- a half-open live link (the network drops everything, the sockets stay open) is detected by
  the client with the default heartbeat (2 s pings, 3 s deadline: dead within 5 s, dropped
  0.5 s later), even while a REST request is stuck on the same dead network;
- the exact ``states()`` sequence of a reconnect after the link is cut;
- an edit, a delete and a mark-read travel from one engine to another;
- the daemon's typing-expiry job deletes an expired indicator while the daemon runs (nothing
  else prunes it: the test only reads the table).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from syncengine import ConnectionState, SyncEngine
from syncengine.daemon import Daemon, DaemonConfig
from syncengine.events import ReadReceipt
from syncengine.server.testing import run_server
from syncengine.store import Store
from syncengine.transport.live import CLOSE_TIMEOUT_S
from tests.contract.proxy import FaultProxy
from tests.scenarios.conftest import (
    SCN_CONVERGE_S,
    ScnClient,
    ScnEngineFactory,
    scn_store_view,
    scn_until,
)

pytestmark = [pytest.mark.integration]

CS = ConnectionState

#: 2 s between pings and 3 s for the answer: a half-open link is known dead 5 s after the
#: last pong at most; the link is then dropped after CLOSE_TIMEOUT_S (its close is never
#: answered). The bound allows the event loop's scheduling on a loaded machine on top.
HALF_OPEN_S = 5.0 + CLOSE_TIMEOUT_S
SCHEDULING_SLACK_S = 1.0


@pytest.mark.timeout(60)
async def test_a_half_open_live_link_is_detected_by_the_heartbeat(
    server: Any, scn_engines: ScnEngineFactory
) -> None:
    async with FaultProxy(server.port) as proxy:
        bob = await scn_engines(
            proxy.url, "bob", heartbeat_interval_s=2.0, heartbeat_timeout_s=3.0
        )
        assert bob.mode == "live"
        proxy.blackhole()  # nothing passes either way; no FIN, no RST
        start = time.monotonic()
        await scn_until(
            lambda: bob.state is not CS.LIVE,
            HALF_OPEN_S + SCHEDULING_SLACK_S + 10.0,
            "bob notices the half-open link",
        )
        took = time.monotonic() - start
        print(f"half-open link detected after {took:.2f} s")
        assert took <= HALF_OPEN_S + SCHEDULING_SLACK_S, took
        # The session ended (BACKOFF), and the next may already be trying (FAST backoff).
        assert bob.state in (CS.BACKOFF, CS.CONNECTING, CS.SYNCING), bob.state
        health = await bob.health()
        assert health.mode != "live" and health.last_error is not None, health
        proxy.blackhole(False)
        assert await bob.wait_for_state(CS.LIVE, SCN_CONVERGE_S)


@pytest.mark.timeout(60)
async def test_the_states_of_a_reconnect_in_order(
    server: Any, scn_engines: ScnEngineFactory
) -> None:
    async with FaultProxy(server.port) as proxy:
        bob = await scn_engines(proxy.url, "bob")
        assert bob.mode == "live"
        seen: list[ConnectionState] = []
        stream = bob.states()
        seen.append(await anext(stream))  # the current state, and the subscription
        assert seen == [CS.LIVE]

        async def collect() -> None:
            async for state in stream:
                seen.append(state)
                if state is CS.LIVE:
                    return

        collector = asyncio.create_task(collect())
        proxy.cut()  # the live link and every REST connection close
        await asyncio.wait_for(collector, SCN_CONVERGE_S)
        assert seen == [CS.LIVE, CS.BACKOFF, CS.CONNECTING, CS.SYNCING, CS.LIVE], seen
        assert bob.mode == "live"
        await stream.aclose()


@pytest.mark.timeout(60)
async def test_an_edit_a_delete_and_a_mark_read_travel_between_two_engines(
    server: Any, scn_engines: ScnEngineFactory
) -> None:
    alice = await scn_engines(server.url, "alice")
    bob = await scn_engines(server.url, "bob")
    receipts: list[ReadReceipt] = []
    alice.on(ReadReceipt, receipts.append)

    cid = (await alice.create_conversation("Travel", members=["bob"])).id
    first = await alice.send(cid, "first draft")
    second = await alice.send(cid, "to be deleted")

    def bob_rows() -> list[Any]:
        return scn_store_view(bob, cid) if bob.store.has_conversation(cid) else []

    await scn_until(lambda: len(bob_rows()) == 2, SCN_CONVERGE_S, "bob has both messages")

    await alice.edit(cid, "final text", target_op_id=first.op_id)
    await alice.delete(cid, target_op_id=second.op_id)

    def bob_sees_edit_and_delete() -> bool:
        by_id = {m.op_id: m for m in bob.store.messages(cid)}
        edited, deleted = by_id.get(first.op_id), by_id.get(second.op_id)
        return (
            edited is not None
            and edited.body == "final text"
            and edited.edited_at is not None
            and deleted is not None
            and deleted.deleted
        )

    await scn_until(bob_sees_edit_and_delete, SCN_CONVERGE_S, "bob sees the edit and the delete")

    last = bob.store.conversation(cid).last_seq
    await bob.mark_read(cid)
    await scn_until(
        lambda: bob.store.conversation(cid).read_seq == last and bob.store.health().pending == 0,
        SCN_CONVERGE_S,
        "bob's read position is acknowledged",
    )
    await scn_until(
        lambda: any(r.user == "bob" and r.read_seq == last for r in receipts)
        and _read_position(alice.db_path, cid, "bob") == last,
        SCN_CONVERGE_S,
        "alice receives and stores bob's read receipt",
        lambda: f"receipts={receipts} stored={_read_position(alice.db_path, cid, 'bob')}",
    )


def _read_position(db: Path, cid: str, user: str) -> int | None:
    """Another member's read position as a store holds it (read-only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT read_seq FROM reads WHERE conversation_id = ? AND user = ?", (cid, user)
        ).fetchone()
    finally:
        con.close()
    return None if row is None else int(row[0])


def _typing_rows(db: Path) -> int:
    """Typing rows in the store, read without touching them (no prune)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM typing").fetchone()[0])
    finally:
        con.close()


@pytest.mark.timeout(60)
async def test_the_daemons_typing_expiry_job_deletes_expired_indicators(tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv") as srv:
        db = tmp_path / "alice.db"
        async with ScnClient(srv.url, "bob") as bob:
            cid = await bob.create("Typing", ["alice"])
        async with SyncEngine(db, connect=False) as engine:
            await engine.login(srv.url, "alice", "alice-password")
            await engine.sync_once()
        daemon = Daemon(DaemonConfig(db_path=db, typing_expiry_s=0.2))
        task = asyncio.create_task(daemon.run())
        try:
            await scn_until(
                lambda: daemon.engine is not None and daemon.engine.state is CS.LIVE,
                SCN_CONVERGE_S,
                "the daemon is live",
            )
            # Written while the daemon runs (its session clears typing only when it ends).
            with Store(db) as store:
                store.apply_typing(cid, "bob", typing=True, ts_ms=1, ttl_s=0.01)
            assert _typing_rows(db) == 1
            await scn_until(lambda: _typing_rows(db) == 0, 5.0, "the job deletes the row")
            assert daemon.engine is not None and daemon.engine.state is CS.LIVE
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 10) == 0
