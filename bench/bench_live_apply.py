"""Live apply: message events streamed over the live channel and committed to the store.

A bare websockets server (child process) streams pre-encoded ``message_received`` frames.

- engine: a real :class:`SyncEngine` session whose live link is the engine's own
  ``WebSocketLink`` (reader task, decode, applier task batching what is queued, one
  transaction per batch with the cursor); its REST side is a stub that has nothing to push or
  pull, so only the live path is measured. Timed until the store's cursor reaches the last pos.
- baseline: raw websockets ``recv`` + ``orjson.loads`` + batched ``executemany`` (a batch is
  committed at 500 rows, or when 10 ms have passed since its first row), into the same schema.

Both start the clock when they send the ``go`` frame that starts the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib as bl
import orjson
from websockets.asyncio.client import connect

HEAD = 1_000


class StubTransport:
    """REST side with nothing to do: no pending work, nothing to pull, no presence."""

    def __init__(self, live_url: str) -> None:
        self.live_url = live_url

    async def login(self, user: str, password: str, device: str) -> str:
        return "token"

    def set_token(self, token: str | None) -> None:
        pass

    async def push(self, ops: Sequence[dict[str, Any]]) -> list[Any]:
        return []

    async def pull(self, since: int, limit: int) -> Any:
        from syncengine.wire import EventPage

        return EventPage(events=(), next=max(since, HEAD), has_more=False)

    async def history(self, conversation_id: str, before: int | None, limit: int) -> Any:
        # Only messages() back-pagination asks for history; this benchmark never reads pages.
        raise NotImplementedError("the live-apply benchmark never asks for history")

    async def conversations(self) -> tuple[list[dict[str, Any]], int]:
        return [], HEAD

    async def presence(self) -> list[dict[str, Any]]:
        return []

    async def connect_live(self) -> Any:
        from syncengine.transport.live import WebSocketLink

        return await WebSocketLink.connect(
            self.live_url, token="token", ssl_context=None, ping_interval=20, ping_timeout=20
        )

    async def aclose(self) -> None:
        pass


async def engine_run(db: Path, url: str, last_pos: int, timeout: float) -> float:
    """Seconds from the ``go`` frame (the presence the engine sends once caught up) to the
    cursor at ``last_pos``."""
    from syncengine import SyncEngine

    go: list[float] = []
    transport = StubTransport(url)
    original = transport.connect_live

    async def connect_live() -> Any:
        link = await original()
        send_presence = link.send_presence

        async def timed_presence(status: str) -> None:
            go.append(time.perf_counter())
            await send_presence(status)

        link.send_presence = timed_presence  # type: ignore[method-assign]
        return link

    transport.connect_live = connect_live  # type: ignore[method-assign]
    engine = SyncEngine(
        db,
        transport_factory=lambda _url: transport,  # type: ignore[arg-type,return-value]
        safety_pull_s=3600,
        heartbeat_interval_s=20,
        heartbeat_timeout_s=20,
    )
    await engine.open()
    engine.store.set_account(server="http://127.0.0.1:1", user="alice", device="bench")
    await engine.set_presence("online")
    try:
        await engine.login("http://127.0.0.1:1", "alice", "pw")
        store = engine.store
        deadline = time.monotonic() + timeout
        while store.cursor() < last_pos:
            if time.monotonic() > deadline:
                raise TimeoutError(f"cursor {store.cursor()} < {last_pos}")
            await asyncio.sleep(0.002)
        done = time.perf_counter()
    finally:
        await engine.close()
    return done - go[0]


async def raw_run(db: Path, url: str, n: int) -> float:
    """Raw receive + decode + batched insert (500 rows or 10 ms); seconds for ``n`` events."""
    conn = bl.raw_connection(db)
    async with connect(url, compression=None, ping_interval=None, max_queue=4096) as ws:
        await ws.send('{"type":"auth","token":"token"}')
        await ws.recv()
        t = time.perf_counter()
        await ws.send('{"type":"go"}')
        batch: list[tuple[Any, ...]] = []
        first = 0.0
        got = 0
        while got < n:
            ev = orjson.loads(await ws.recv())
            got += 1
            if not batch:
                first = time.perf_counter()
            batch.append(bl.message_row(ev))
            if len(batch) >= 500 or got == n or time.perf_counter() - first >= 0.010:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(bl.RAW_INSERT, batch)
                conn.execute("COMMIT")
                batch = []
        elapsed = time.perf_counter() - t
    conn.close()
    return elapsed


async def run(smoke: bool, seed: int) -> None:
    from syncengine.store import Store

    n = bl.sized(100_000, smoke)
    started = time.perf_counter()
    with bl.workdir() as tmp:
        Store(tmp / "raw.db", user="alice").close()
        with bl.feeder_process("message", n, head=HEAD, seed=seed) as feed:
            raw_s = await raw_run(tmp / "raw.db", feed.url, n)
            engine_s = await engine_run(tmp / "engine.db", feed.url, HEAD + n, 120)
    engine_rate = n / engine_s
    raw_rate = n / raw_s
    ratio = engine_rate / raw_rate
    bl.emit(
        "live_apply",
        f"live apply: {n:,} message events over the live channel into the store",
        unit="events/s",
        value=engine_rate,
        baseline=raw_rate,
        ratio=ratio,
        target=">= 0.70 of raw",
        met=ratio >= 0.7,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        events=n,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
