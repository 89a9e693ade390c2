"""The oracle (lost 0, duplicated 0) for SyncEngine on Synapse, through the fault proxy.

The engine talks to Synapse through ``tests/contract/proxy.py``: connections are cut and
refused while messages are sent, answers are truncated (the server applied the send, the
acknowledgement was lost). The truth is what nio reads from Synapse's ``/messages``.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from syncengine.models import ConnectionState
from tests.contract.oracle import Oracle
from tests.contract.proxy import FaultProxy
from tests.matrix.conftest import PASSWORD
from tests.matrix.helpers import nio_join_all, nio_timeline
from tests.matrix.test_engine_matrix import matrix_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SEED = 15


async def test_oracle_through_the_fault_proxy(synapse, new_user, nio_client, tmp_path) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    rng = random.Random(SEED)
    oracle = Oracle("matrix-proxy", SEED)
    async with FaultProxy(synapse.port) as proxy:
        async with matrix_engine(tmp_path / "alice.db") as engine:
            await engine.login(proxy.url, alice, PASSWORD, device="PHONE")
            conv = await engine.create_conversation("oracle", [bob])
            assert await engine.wait_for_pending(timeout=60)
            for i in range(60):
                await oracle.send(engine, conv.id, f"m{i:02d}")
                roll = rng.random()
                if roll < 0.15:
                    oracle.fault("cut", proxy.cut())
                elif roll < 0.22:
                    proxy.refuse(True, cut=True)
                    oracle.fault("refuse")
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
                    proxy.refuse(False)
                elif roll < 0.28:
                    proxy.set_truncate(rng.randint(50, 400))  # an answer cut mid-way
                    oracle.fault("truncate")
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
                    proxy.set_truncate(None)
                await asyncio.sleep(rng.uniform(0, 0.03))
            proxy.refuse(False)
            proxy.set_truncate(None)
            oracle.healed()
            assert await engine.wait_for_pending(timeout=90)
            nio = await nio_client(bob)
            await nio_join_all(nio)
            [room_id] = list(nio.rooms)

            async def truth() -> dict[str, list[dict[str, object]]]:
                msgs = []
                for e in await nio_timeline(nio, room_id):
                    content = e.get("content") or {}
                    if e.get("type") != "m.room.message" or "m.relates_to" in content:
                        continue
                    msgs.append(
                        {
                            "message_id": e["event_id"],
                            "seq": None,
                            "op_id": content.get("net.syncengine.op_id"),
                            "sender": e["sender"],
                            "body": content.get("body", ""),
                        }
                    )
                return {conv.id: msgs}

            fig = oracle.check_server(await truth())
            # the store converges on the server: each message once, with its event id
            expected = [(m["message_id"], m["body"]) for m in (await truth())[conv.id]]
            async with asyncio.timeout(60):
                while True:
                    mine = [(m.id, m.body) for m in engine.store.messages(conv.id, limit=1000)]
                    if mine == expected:
                        break
                    await asyncio.sleep(0.1)
            assert engine.state is ConnectionState.LIVE
            assert sum(oracle.faults.values()) > 0
            oracle.assert_ok(fig)
            assert fig.messages == 60
