"""Clock skew on the engine side (-1 day, +1 year): ordering unchanged, nothing dropped (G4).

The server runs in a subprocess with the true clock; the test process (both engines) runs
under time-machine, shifted. Messages are ordered by the server's seq, never by the local
clock; pending echoes sit after the server messages in send order; typing and presence from
the server are shown, not dropped as stale; own op ids (time-ordered on the skewed clock)
are accepted.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import time_machine

from syncengine import SyncEngine
from syncengine.models import ConnectionState, MessageState
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR, Oracle, eventually, scale

pytestmark = [pytest.mark.integration]

SKEWS = {"minus-1-day": dt.timedelta(days=-1), "plus-1-year": dt.timedelta(days=365)}


@pytest.mark.parametrize("skew", list(SKEWS), ids=list(SKEWS))
@pytest.mark.timeout(600 if scale(1) > 1 else 120)
async def test_clock_skew_keeps_order_and_drops_nothing(
    tmp_path: Path, server_process: Any, skew: str, seed: int
) -> None:
    oracle = Oracle(f"clock-skew {skew}", seed)
    n = scale(60)
    url = f"http://127.0.0.1:{server_process.port}"
    shifted = dt.datetime.now(dt.UTC) + SKEWS[skew]
    with time_machine.travel(shifted, tick=True):
        oracle.fault(f"clock {skew}")
        async with (
            SyncEngine(tmp_path / "a.db", **FAST) as alice,
            SyncEngine(tmp_path / "b.db", **FAST) as bob,
        ):
            await alice.login(url, "alice", "pw")
            await bob.login(url, "bob", "pw")
            cid = (await alice.create_conversation("Skew", members=["bob"])).id
            await eventually(lambda: bob.store.has_conversation(cid), what="bob sees the chat")
            for e in (alice, bob):
                assert await e.wait_for_state(ConnectionState.LIVE, 10 * TIME_FACTOR)
            # Alternate senders; each waits for its own ack so the server's order is known.
            expected: list[str] = []
            for i in range(n):
                engine = alice if i % 2 == 0 else bob
                body = f"{engine.store.user} {i}"
                op_id = await oracle.send(engine, cid, body)
                await eventually(
                    lambda e=engine, o=op_id: e.store.message_by_op(o).state is MessageState.SENT,
                    what="ack",
                )
                expected.append(body)
            # Ephemeral state from the server is ordered by its ts_ms and shown.
            await bob.set_typing(cid, True)
            await eventually(
                lambda: [t.user for t in alice.store.typing(cid)] == ["bob"], what="typing"
            )
            await alice.set_presence("away")
            await eventually(
                lambda: (p := bob.store.presence("alice")) is not None and p.status == "away",
                what="presence",
            )
            oracle.healed()
            fig = await oracle.converge(
                lambda: {cid: server_messages(tmp_path, server_process, cid)},
                {"alice": (alice.store, [cid]), "bob": (bob.store, [cid])},
                timeout=30 * TIME_FACTOR,
            )
            oracle.assert_ok(fig)
            for e in (alice, bob):
                assert [m.body for m in e.store.messages(cid, limit=1000)] == expected
            # Offline echoes sit after the server messages, in send order, whatever the clock.
            await alice.close()
        offline = SyncEngine(tmp_path / "a.db", connect=False, **FAST)
        async with offline:
            for i in range(3):
                await offline.send(cid, f"queued {i}")
            rows = offline.store.messages(cid, limit=1000)
            assert [m.body for m in rows] == expected + [f"queued {i}" for i in range(3)]


def server_messages(tmp_path: Path, server_process: Any, cid: str) -> list[dict[str, Any]]:
    from syncengine.server.storage import Storage

    truth = Storage(server_process.data_dir / "server.sqlite3")
    try:
        return truth.all_messages(cid)
    finally:
        truth.close()


@pytest.mark.timeout(120)
async def test_clock_jumping_back_a_day_does_not_park_the_outbox(
    tmp_path: Path, server: Any, seed: int
) -> None:
    """Operations that failed a push and wait for their retry must not wait a day more
    when the wall clock is set back by a day (an NTP correction, a user fixing the date)."""
    from tests.contract.proxy import FaultProxy

    oracle = Oracle("clock-jump -1 day", seed)
    async with FaultProxy(server.port) as proxy:
        traveller = time_machine.travel(dt.datetime.now(dt.UTC), tick=True)
        clock = traveller.start()
        try:
            async with SyncEngine(tmp_path / "a.db", **FAST) as alice:
                await alice.login(proxy.url, "alice", "pw")
                cid = (await alice.create_conversation("Jump", members=[])).id
                assert await alice.wait_for_pending(10 * TIME_FACTOR)
                proxy.refuse(True, cut=True)  # the server is gone: pushes fail and back off
                sent = [await oracle.send(alice, cid, f"queued {i}") for i in range(5)]
                first = sent[0]

                def tried() -> bool:
                    item = alice.store.outbox_item(first)
                    return item is not None and item.attempts >= 1

                await eventually(tried, what="a push attempt failed")
                clock.shift(-86400)
                oracle.fault("clock set back 1 day")
                proxy.heal()
                oracle.healed()
                fig = await oracle.converge(
                    lambda: {cid: server.state.all_messages(cid)},
                    {"alice": (alice.store, [cid])},
                    timeout=20,
                )
                oracle.assert_ok(fig, converge_bound_s=10.0 * TIME_FACTOR)
        finally:
            traveller.stop()
