"""History page: ``SyncEngine.messages(cid, limit=50)`` p50, against a raw keyset SELECT.

The store holds 100k messages in 100 conversations. The engine is offline with the history
marked complete, so every call is answered from the store (no backfill request).

- engine: ``await engine.messages(cid, limit=50)`` (a :class:`HistoryPage` of
  :class:`Message` objects, local echoes appended, ``has_more`` worked out).
- baseline: the same page with one raw keyset ``SELECT`` (same columns, same join of edits
  and deletes, ``ORDER BY seq DESC LIMIT 50``) returning tuples.

Calls alternate between the two, over random conversations, so drift hits both alike.
"""

from __future__ import annotations

import asyncio
import random
import time

import benchlib as bl

PAGE = 50
RAW_SELECT = (
    "SELECT m.conversation_id, m.op_id, m.id, m.seq, m.sender, "
    "CASE WHEN p.deleted = 1 THEN '' WHEN p.body IS NOT NULL THEN p.body ELSE m.body END, "
    "m.state, m.created_at, p.edited_at, COALESCE(p.deleted, 0) "
    "FROM messages m LEFT JOIN message_patches p ON p.message_id = m.id "
    "WHERE m.conversation_id = ? AND m.seq IS NOT NULL ORDER BY m.seq DESC LIMIT ?"
)


async def run(smoke: bool, seed: int) -> None:
    from syncengine import SyncEngine

    held = bl.sized(100_000, smoke, minimum=5_000)
    calls = bl.sized(5_000, smoke, minimum=200, fraction=0.04)
    rng = random.Random(seed)
    started = time.perf_counter()
    with bl.workdir() as tmp:
        cids = bl.prefill_store(tmp / "store.db", held)
        engine = SyncEngine(tmp / "store.db", connect=False)
        await engine.open()
        for cid in cids:
            engine.store.set_history_complete(cid)
        conn = bl.raw_connection(tmp / "store.db")
        engine_ms: list[float] = []
        raw_ms: list[float] = []
        try:
            for _ in range(calls):
                cid = rng.choice(cids)
                t = time.perf_counter()
                page = await engine.messages(cid, limit=PAGE)
                engine_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                rows = conn.execute(RAW_SELECT, (cid, PAGE)).fetchall()
                raw_ms.append((time.perf_counter() - t) * 1000)
                assert len(page.messages) == len(rows) == PAGE, (len(page.messages), len(rows))
        finally:
            conn.close()
            await engine.close()
    p50 = bl.percentile(engine_ms, 50)
    raw_p50 = bl.percentile(raw_ms, 50)
    ratio = p50 / raw_p50
    bl.emit(
        "history",
        f"history page: messages(limit={PAGE}) p50 in a store of {held:,} messages",
        unit="ms (p50)",
        value=p50,
        baseline=raw_p50,
        ratio=ratio,
        target="<= 2x the raw keyset SELECT",
        met=ratio <= 2.0,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        calls=calls,
        p99_ms=bl.percentile(engine_ms, 99),
        raw_p99_ms=bl.percentile(raw_ms, 99),
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
