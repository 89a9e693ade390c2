"""Cursor older than the server's retention (G5): one Discontinuity, then the server's view.

The server keeps only the last 100 events. Bob has read the first messages, goes offline while
300 more arrive, and comes back with a cursor the server no longer serves (410). The engine
resyncs from a snapshot (conversations + history) and emits exactly one ``Discontinuity``; its
store then equals the server's view, and messages after the resync arrive once each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine import Discontinuity, SyncEngine
from syncengine.models import ConnectionState
from syncengine.server.testing import run_server
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR, Oracle, eventually, scale
from tests.contract.proxy import FaultProxy

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(600 if scale(1) > 1 else 120)
async def test_offline_past_retention_gives_one_discontinuity(tmp_path: Path, seed: int) -> None:
    oracle = Oracle("discontinuity", seed)
    before, offline, after = 20, scale(300), 30
    async with run_server(tmp_path / "srv", retention=100) as srv, FaultProxy(srv.port) as proxy:
        alice = SyncEngine(tmp_path / "a.db", **FAST)
        async with alice:
            await alice.login(proxy.url, "alice", "pw")
            cid = (await alice.create_conversation("Retention", members=["bob"])).id
            bob = SyncEngine(tmp_path / "b.db", **FAST)
            async with bob:
                await bob.login(proxy.url, "bob", "pw")
                for i in range(before):
                    await oracle.send(alice, cid, f"before {i}")
                await eventually(lambda: bob.store.message_count(cid) == before, what="bob live")
                old_cursor = bob.store.cursor()
            for i in range(offline):
                await oracle.send(alice, cid, f"offline {i}")
            assert await alice.wait_for_pending(30)
            assert srv.state.oldest_pos > old_cursor + 1, "the retention did not expire bob"
            oracle.fault("cursor expired")

            bob = SyncEngine(tmp_path / "b.db", **FAST)
            seen: list[Discontinuity] = []
            bob.on(Discontinuity, seen.append)
            async with bob:
                await eventually(
                    lambda: bob.store.message_count(cid) == before + offline,
                    timeout=30,
                    what="bob resynced",
                )
                assert await bob.wait_for_state(ConnectionState.LIVE, 10 * TIME_FACTOR)
                oracle.healed()
                for i in range(after):
                    await oracle.send(alice, cid, f"after {i}")
                fig = await oracle.converge(
                    lambda: {cid: srv.state.all_messages(cid)},
                    {"alice": (alice.store, [cid]), "bob": (bob.store, [cid])},
                    timeout=30 * TIME_FACTOR,
                )
                fig.extra["discontinuities"] = len(seen)
                oracle.assert_ok(fig)
                assert len(seen) == 1, f"expected one Discontinuity, got {len(seen)}"
                assert seen[0].old_cursor == old_cursor
                assert bob.store.cursor() >= seen[0].new_cursor
                # the conversation list matches the server's, and nothing was quarantined
                [conv] = bob.store.conversations()
                assert conv.id == cid and conv.members == ("alice", "bob")
                assert bob.store.quarantined() == []
