"""Latency: a send on engine A until the message is committed in engine B's store.

Both engines are live against the reference server (child process). A sends at a steady
rate; B's ``MessageReceived`` callback runs right after the transaction that stored the
message commits, so its clock reading is "committed in B's store".

The raw pieces are measured in the same run, each on its own:

- one ``POST /v1/ops`` of one send (httpx, to the same server);
- one WebSocket hop (half a round trip to a bare websockets echo server, child process);
- one one-row commit under ``synchronous=FULL``.

Target: p99 <= 3 x (the sum of the pieces' p99) + the engine's batching window. The
engine has no time-based batching window on this path (the live applier commits what is
queued at once, and a send wakes the pusher at once), so the window is 0.
"""

from __future__ import annotations

import asyncio
import time

import benchlib as bl
import httpx
import orjson
from websockets.asyncio.client import connect

from syncengine.models import new_id

WINDOW_MS = 0.0


async def engine_latencies(url: str, tmp: bl.Path, n: int, rate: float) -> list[float]:
    from syncengine import ConnectionState, MessageReceived

    a = await bl.logged_in_engine(tmp / "a.db", url, "alice", connect=True, **bl.FAST)
    b = await bl.logged_in_engine(tmp / "b.db", url, "bob", connect=True, **bl.FAST)
    try:
        for engine in (a, b):
            assert await engine.wait_for_state(ConnectionState.LIVE, timeout=10)
        conv = await a.create_conversation("latency", members=["bob"])
        arrived: dict[str, float] = {}
        sent: dict[str, float] = {}
        b.on(
            MessageReceived,
            lambda ev: arrived.setdefault(ev.op_id or "", time.perf_counter()),
        )
        await a.send(conv.id, "warm-up")
        deadline = time.monotonic() + 10
        while len(arrived) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        arrived.clear()
        interval = 1.0 / rate
        start = time.perf_counter()
        for i in range(n):
            wake = start + i * interval
            await asyncio.sleep(max(0.0, wake - time.perf_counter()))
            t = time.perf_counter()
            msg = await a.send(conv.id, f"{bl.BODY}{i}")
            sent[msg.op_id or ""] = t
        deadline = time.monotonic() + 15
        while len(arrived) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return [(arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived]
    finally:
        await a.close()
        await b.close()


async def post_latencies(url: str, n: int) -> list[float]:
    from syncengine.server.testing import login

    token = await login(url, "carol", "carol-password", "raw")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        cid = new_id()
        resp = await client.post("/v1/conversations", json={"id": cid, "title": "raw"})
        resp.raise_for_status()
        out = []
        for i in range(n):
            body = orjson.dumps(
                {
                    "ops": [
                        {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": str(i)}
                    ]
                }
            )
            t = time.perf_counter()
            resp = await client.post("/v1/ops", content=body)
            out.append((time.perf_counter() - t) * 1000)
            resp.raise_for_status()
    return out


async def ws_hop_latencies(url: str, n: int) -> list[float]:
    frame = orjson.dumps({"type": "message_received", "body": bl.BODY, "pos": 1}).decode()
    out = []
    async with connect(url, compression=None, ping_interval=None) as ws:
        for _ in range(n):
            t = time.perf_counter()
            await ws.send(frame)
            await ws.recv()
            out.append((time.perf_counter() - t) * 1000 / 2)
    return out


def commit_latencies(tmp: bl.Path, n: int) -> list[float]:
    conn = bl.raw_connection(tmp / "raw.db")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, body TEXT)")
    out = []
    for i in range(n):
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (new_id(), f"{bl.BODY}{i}"))
        conn.execute("COMMIT")
        out.append((time.perf_counter() - t) * 1000)
    conn.close()
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": bl.percentile(values, 50), "p99": bl.percentile(values, 99)}


async def run(smoke: bool, seed: int) -> None:
    rate = 50.0
    n = bl.sized(500, smoke, minimum=20, fraction=0.04)  # 10 s at 50 msg/s (smoke: 0.4 s)
    k = bl.sized(300, smoke, minimum=20, fraction=0.1)
    started = time.perf_counter()
    with bl.workdir() as tmp, bl.server_process(tmp / "server") as srv:
        lat = await engine_latencies(srv.url, tmp, n, rate)
        post = await post_latencies(srv.url, k)
        with bl.feeder_process("echo", 0) as echo:
            hop = await ws_hop_latencies(echo.url, k)
        commit = commit_latencies(tmp, k)
    eng, p, h, c = summary(lat), summary(post), summary(hop), summary(commit)
    pieces_p99 = p["p99"] + h["p99"] + c["p99"]
    pieces_p50 = p["p50"] + h["p50"] + c["p50"]
    bound = 3 * pieces_p99 + WINDOW_MS
    bl.emit(
        "latency",
        f"latency: send on A -> committed in B's store at {rate:.0f} msg/s ({len(lat)} messages)",
        unit="ms (p99)",
        value=eng["p99"],
        baseline=pieces_p99,
        ratio=eng["p99"] / pieces_p99,
        target="p99 <= 3 x sum of raw pieces' p99 + batching window (0 ms)",
        met=len(lat) == n and eng["p99"] <= bound,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        p50_ms=eng["p50"],
        p99_ms=eng["p99"],
        received=len(lat),
        sent=n,
        pieces_p50_ms=pieces_p50,
        pieces_p99_ms=pieces_p99,
        post_p50_ms=p["p50"],
        post_p99_ms=p["p99"],
        ws_hop_p50_ms=h["p50"],
        ws_hop_p99_ms=h["p99"],
        commit_p50_ms=c["p50"],
        commit_p99_ms=c["p99"],
        window_ms=WINDOW_MS,
        bound_ms=bound,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
