"""Typing and presence events handled by the engine, against raw receive + decode.

A bare websockets server (child process) streams typing and presence frames, then one
``message_received`` sentinel.

- engine: a real :class:`SyncEngine` session on the engine's ``WebSocketLink`` (see
  bench_live_apply.py): each event is decoded, recorded in the store (typing rows expire,
  presence is ordered by ``ts_ms``) and emitted to subscribers. Timed until the sentinel is
  committed (the reader handles frames in order, so every event before it was handled).
- baseline: raw websockets ``recv`` + ``orjson.loads`` of the same frames.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import bench_live_apply as live
import benchlib as bl
import orjson
from websockets.asyncio.client import connect


async def raw_run(url: str, n: int) -> float:
    """Raw receive + decode; seconds for ``n`` frames and the sentinel."""
    async with connect(url, compression=None, ping_interval=None, max_queue=4096) as ws:
        await ws.send('{"type":"auth","token":"token"}')
        await ws.recv()
        t = time.perf_counter()
        await ws.send('{"type":"go"}')
        for _ in range(n + 1):
            orjson.loads(await ws.recv())
        return time.perf_counter() - t


async def engine_run(db: Path, url: str, timeout: float) -> float:
    return await live.engine_run(db, url, live.HEAD + 1, timeout)


async def run(smoke: bool, seed: int) -> None:
    n = bl.sized(50_000, smoke)
    started = time.perf_counter()
    with bl.workdir() as tmp:
        with bl.feeder_process("ephemeral", n, head=live.HEAD, seed=seed) as feed:
            raw_s = await raw_run(feed.url, n)
            engine_s = await engine_run(tmp / "engine.db", feed.url, 120)
    engine_rate = (n + 1) / engine_s
    raw_rate = (n + 1) / raw_s
    ratio = engine_rate / raw_rate
    bl.emit(
        "ephemeral",
        f"typing/presence: {n:,} events handled",
        unit="events/s",
        value=engine_rate,
        baseline=raw_rate,
        ratio=ratio,
        target=">= 0.50 of raw receive + decode",
        met=ratio >= 0.5,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        events=n,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
