"""Outbox enqueue: ``SyncEngine.send()`` against a raw one-row commit with synchronous=FULL.

- engine: ``await engine.send(cid, body)``: validation, one ``BEGIN IMMEDIATE`` transaction
  (outbox row + local echo) under ``synchronous=FULL``, the echo read back, ``MessageQueued``
  emitted. The engine is offline (nothing is pushed while measuring).
- baseline: one ``INSERT`` into a table of the same shape as the outbox, committed alone
  under ``synchronous=FULL`` in WAL mode (the durability the engine promises, G1).

The two are interleaved in rounds so that disk and CPU drift hit both alike.
"""

from __future__ import annotations

import asyncio
import time

import benchlib as bl
import orjson

from syncengine.models import new_id

ROUNDS = 5


async def run(smoke: bool, seed: int) -> None:
    from syncengine import SyncEngine

    n = bl.sized(5_000, smoke, minimum=20)
    per_round = max(1, n // ROUNDS)
    started = time.perf_counter()
    with bl.workdir() as tmp:
        engine = SyncEngine(tmp / "engine.db", connect=False)
        await engine.open()
        engine.store.set_account(server="http://127.0.0.1:1", user="alice", device="bench")
        conv = await engine.create_conversation("bench", members=["bob"])
        conn = bl.raw_connection(tmp / "raw.db")
        conn.execute(
            "CREATE TABLE outbox (n INTEGER PRIMARY KEY AUTOINCREMENT, op_id TEXT NOT NULL "
            "UNIQUE, kind TEXT NOT NULL, conversation_id TEXT NOT NULL, payload TEXT NOT NULL, "
            "state TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)"
        )
        engine_s = raw_s = 0.0
        try:
            for r in range(ROUNDS):
                t = time.perf_counter()
                for i in range(per_round):
                    await engine.send(conv.id, f"{bl.BODY}{r}-{i}")
                engine_s += time.perf_counter() - t
                t = time.perf_counter()
                for i in range(per_round):
                    now = time.time()
                    payload = orjson.dumps({"body": f"{bl.BODY}{r}-{i}"}).decode()
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "INSERT INTO outbox(op_id, kind, conversation_id, payload, state, "
                        "created_at, updated_at) VALUES (?, 'send', ?, ?, 'pending', ?, ?)",
                        (new_id(now), conv.id, payload, now, now),
                    )
                    conn.execute("COMMIT")
                raw_s += time.perf_counter() - t
            assert engine.store.health().pending == per_round * ROUNDS + 1
        finally:
            conn.close()
            await engine.close()
    total = per_round * ROUNDS
    engine_rate = total / engine_s
    raw_rate = total / raw_s
    ratio = engine_rate / raw_rate
    bl.emit(
        "enqueue",
        f"outbox enqueue: {total:,} sends, each durable on return",
        unit="ops/s",
        value=engine_rate,
        baseline=raw_rate,
        ratio=ratio,
        target=">= 0.50 of a raw one-row FULL commit",
        met=ratio >= 0.5,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        ops=total,
        engine_us=1e6 / engine_rate,
        raw_us=1e6 / raw_rate,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
