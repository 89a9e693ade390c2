"""Random network faults between two engines and the server (G1, G2, G3, G4).

500 messages from 2 engines in 2 conversations while a fault proxy injects 20 faults: 19
random ones (connection cuts, half-open blackholes, delays, truncated responses, refused
connects) while the apps send, then a full outage during which the last tenth of the
messages is queued offline. Oracle: lost 0, duplicated 0, unexpected 0, and both stores
converge to the server's view within 10 s (asserted against 10 s x
``SYNCENGINE_TIME_FACTOR``) after the last fault heals.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.contract.oracle import TIME_FACTOR, Oracle, eventually, scale, soak_only
from tests.contract.proxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAULT_KINDS = ("cut", "blackhole", "delay", "truncate", "refuse")


async def random_fault(proxy: FaultProxy, rng: random.Random) -> None:
    """One random fault, held for a random time, then healed."""
    kind = rng.choice(FAULT_KINDS)
    if kind == "cut":
        proxy.cut()
        return
    if kind == "blackhole":
        proxy.blackhole(True)
    elif kind == "delay":
        proxy.set_delay(rng.uniform(0.05, 0.3))
    elif kind == "truncate":
        proxy.set_truncate(rng.randrange(0, 2000))
    else:
        proxy.refuse(True, cut=True)
    await asyncio.sleep(rng.uniform(0.1, 1.2))
    proxy.heal()


@pytest.mark.timeout(600 if scale(1) > 1 else 240)
async def test_random_disconnects(engines: Any, proxy: FaultProxy, server: Any, seed: int) -> None:
    rng = random.Random(seed)
    oracle = Oracle("random-disconnects", seed)
    n_messages = scale(500)
    n_faults = scale(20)
    alice = await engines("alice")
    bob = await engines("bob")
    cids = [(await alice.create_conversation(f"chat {k}", members=["bob"])).id for k in range(2)]
    await eventually(
        lambda: all(bob.store.has_conversation(c) for c in cids), what="bob sees both chats"
    )
    outage = asyncio.Event()  # the last fault has begun
    sent_all = asyncio.Event()

    async def faults(frng: random.Random) -> None:
        for _ in range(n_faults - 1):
            await asyncio.sleep(frng.uniform(0.1, 0.5))
            await random_fault(proxy, frng)
        proxy.refuse(True, cut=True)  # the last fault: a full outage while the apps send
        outage.set()
        await sent_all.wait()
        await asyncio.sleep(0.5)
        proxy.heal()
        oracle.healed()

    async def sender(engine: Any, order: list[str], n: int, srng: random.Random, tag: str) -> None:
        online = n - n // 10
        pace = (n_faults * 0.95) / max(1, online)  # spread the sends over the faults
        for i in range(n):
            if i == online:
                await outage.wait()
            await oracle.send(engine, order[i % 2], f"{tag}-{i}-{srng.randrange(1 << 30):x}")
            if i < online:
                await asyncio.sleep(srng.uniform(0, 2 * pace))

    injector = asyncio.create_task(faults(random.Random(rng.random())))
    half = n_messages // 2
    await asyncio.gather(
        sender(alice, cids, half, random.Random(rng.random()), "a"),
        sender(bob, cids[::-1], n_messages - half, random.Random(rng.random()), "b"),
    )
    sent_all.set()
    await injector
    oracle.add_faults(proxy.faults)

    fig = await oracle.converge(
        lambda: {c: server.state.all_messages(c) for c in cids},
        {"alice": (alice.store, cids), "bob": (bob.store, cids)},
        timeout=60 * TIME_FACTOR,
        until_acked=lambda: all(
            (h := e.store.health()).pending == 0 and h.sending == 0 for e in (alice, bob)
        ),
    )
    fig.extra["proxy_connections"] = proxy.connections
    oracle.assert_ok(fig, converge_bound_s=10.0 * TIME_FACTOR)
    assert fig.faults == n_faults
    assert fig.messages == n_messages  # every call returned: every message is on the server


@pytest.mark.timeout(600 if scale(1) > 1 else 180)
async def test_server_side_faults(engines: Any, server: Any, seed: int) -> None:
    """The server fails on its own: 503 before handling, lost acknowledgements (handled, then
    answered 503) and live connections dropped mid-stream, while two engines send 300
    messages. Every replay must be deduplicated; every store must converge."""
    rng = random.Random(seed)
    oracle = Oracle("server faults", seed)
    n = scale(300)
    alice = await engines("alice")
    bob = await engines("bob")
    cids = [(await alice.create_conversation(f"srv {k}", members=["bob"])).id for k in range(2)]
    await eventually(lambda: all(bob.store.has_conversation(c) for c in cids), what="chats")
    faults = server.faults
    faults.rng = random.Random(rng.random())
    faults.error_rate, faults.lost_ack_rate, faults.drop_rate = 0.1, 0.2, 0.02

    async def sender(engine: Any, order: list[str], count: int, tag: str) -> None:
        srng = random.Random(rng.random())
        for i in range(count):
            await oracle.send(engine, order[i % 2], f"{tag}-{i}-{srng.randrange(1 << 30):x}")
            await asyncio.sleep(srng.uniform(0, 0.03))

    await asyncio.gather(sender(alice, cids, n // 2, "a"), sender(bob, cids[::-1], n - n // 2, "b"))
    await asyncio.sleep(1.0)  # the faults go on a little after the last send
    faults.clear()
    oracle.healed()
    oracle.add_faults(faults.injected)
    fig = await oracle.converge(
        lambda: {c: server.state.all_messages(c) for c in cids},
        {"alice": (alice.store, cids), "bob": (bob.store, cids)},
        timeout=60 * TIME_FACTOR,
        until_acked=lambda: all(
            (h := e.store.health()).pending == 0 and h.sending == 0 for e in (alice, bob)
        ),
    )
    oracle.assert_ok(fig, converge_bound_s=10.0 * TIME_FACTOR)
    assert fig.messages == n
    assert faults.injected.get("lost_ack", 0) > 0, "no ack was lost: the test proves nothing"


@soak_only
@pytest.mark.timeout(3600)
async def test_soak_network_and_server_faults_together(
    engines: Any, proxy: FaultProxy, server: Any, seed: int
) -> None:
    """Soak only: three engines, three conversations, proxy faults and server faults at the
    same time for the whole run (scale(500) = 20,000 messages)."""
    rng = random.Random(seed)
    oracle = Oracle("soak: network + server faults", seed)
    n = scale(500)
    users = [await engines(u) for u in ("alice", "bob", "carol")]
    cids = [
        (await users[0].create_conversation(f"soak {k}", members=["bob", "carol"])).id
        for k in range(3)
    ]
    await eventually(
        lambda: all(u.store.has_conversation(c) for u in users for c in cids), what="chats"
    )
    faults = server.faults
    faults.rng = random.Random(rng.random())
    faults.error_rate, faults.lost_ack_rate, faults.drop_rate = 0.05, 0.1, 0.01
    done = asyncio.Event()

    async def network(frng: random.Random) -> None:
        while not done.is_set():
            await asyncio.sleep(frng.uniform(0.2, 1.0))
            await random_fault(proxy, frng)

    async def sender(engine: Any, count: int, srng: random.Random) -> None:
        for i in range(count):
            cid = cids[srng.randrange(len(cids))]
            await oracle.send(engine, cid, f"{engine.store.user}-{i}-{srng.randrange(1 << 30):x}")
            await asyncio.sleep(srng.uniform(0, 0.02))

    chaos = asyncio.create_task(network(random.Random(rng.random())))
    await asyncio.gather(*(sender(u, n // 3, random.Random(rng.random())) for u in users))
    done.set()
    await chaos
    proxy.heal()
    faults.clear()
    oracle.healed()
    oracle.add_faults(proxy.faults)
    oracle.add_faults(faults.injected)
    fig = await oracle.converge(
        lambda: {c: server.state.all_messages(c) for c in cids},
        {u.store.user: (u.store, cids) for u in users},
        timeout=300,
        until_acked=lambda: all(
            (h := u.store.health()).pending == 0 and h.sending == 0 for u in users
        ),
    )
    oracle.assert_ok(fig, converge_bound_s=10.0 * TIME_FACTOR)
