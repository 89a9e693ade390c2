"""Outbox flush: queued operations acknowledged once the server can be reached again.

- engine: sends queued while offline; then ``sync_once()`` claims them in batches, pushes each
  batch with one ``POST /v1/ops`` and records the batch's acknowledgements (echo promoted to
  the server copy, outbox row SENT) in one transaction. Timed until the outbox has nothing
  pending or sending (the pull that ``sync_once()`` does next is not counted).
- baseline: raw httpx ``POST /v1/ops`` of the same payloads in the same batch size (another
  device of the same user, so the server applies them afresh rather than as replays).

The reference server runs in a child process; both runs share it (baseline first).
"""

from __future__ import annotations

import asyncio
import time

import benchlib as bl
import httpx
import orjson

from syncengine.models import new_id

BATCH = 500  # the engine's default push batch (the protocol's maximum)
OUTSTANDING = "SELECT EXISTS (SELECT 1 FROM outbox WHERE state IN ('pending', 'sending'))"


async def run(smoke: bool, seed: int) -> None:
    from syncengine.server.testing import login

    n = bl.sized(10_000, smoke)
    started = time.perf_counter()
    with bl.workdir() as tmp, bl.server_process(tmp / "server") as srv:
        engine = await bl.logged_in_engine(tmp / "engine.db", srv.url, "alice", push_batch=BATCH)
        try:
            conv = await engine.create_conversation("flush", members=["bob"])
            await engine.sync_once()  # the conversation exists on the server
            for i in range(n):
                await engine.send(conv.id, f"{bl.BODY}{i}")
            ops = [
                {
                    "op_id": new_id(),
                    "kind": "send",
                    "conversation_id": conv.id,
                    "body": it.payload["body"],
                }
                for it in engine.store.outbox("pending", limit=n)
            ]
            assert len(ops) == n

            token = await login(srv.url, "alice", "alice-password", "raw")
            async with httpx.AsyncClient(
                base_url=srv.url, headers={"Authorization": f"Bearer {token}"}
            ) as client:
                t = time.perf_counter()
                for start in range(0, n, BATCH):
                    resp = await client.post(
                        "/v1/ops",
                        content=orjson.dumps({"ops": ops[start : start + BATCH]}),
                        headers={"Content-Type": "application/json"},
                    )
                    resp.raise_for_status()
                    results = orjson.loads(resp.content)["results"]
                    assert all(r["status"] == "applied" for r in results)
                raw_s = time.perf_counter() - t

            # The clock stops when the last acknowledgement is recorded; sync_once() then
            # goes on to pull the messages back (not part of this figure).
            # A second connection watches the outbox (an indexed probe, not health(): it must
            # not slow the engine down).
            probe = bl.raw_connection(tmp / "engine.db")
            t = time.perf_counter()
            sync = asyncio.ensure_future(engine.sync_once())
            while not sync.done():
                if not probe.execute(OUTSTANDING).fetchone()[0]:
                    break
                await asyncio.sleep(0.002)
            engine_s = time.perf_counter() - t
            probe.close()
            done = await sync
            health = engine.store.health()
            assert done.pushed == n and health.pending == 0 and health.sending == 0, health
        finally:
            await engine.close()
    engine_rate = n / engine_s
    raw_rate = n / raw_s
    ratio = engine_rate / raw_rate
    bl.emit(
        "flush",
        f"outbox flush: {n:,} queued operations acknowledged after reconnect",
        unit="ops/s",
        value=engine_rate,
        baseline=raw_rate,
        ratio=ratio,
        target=">= 0.50 of raw batched POST",
        met=ratio >= 0.5,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        ops=n,
        batch=BATCH,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
