"""Catch-up: events pulled from the reference server into a store already holding as many.

- engine: ``SyncEngine.sync_once()`` pulls every page over REST (httpx), decodes it (orjson +
  cattrs) and applies it with its cursor in one transaction per page.
- baseline: raw ``executemany ... ON CONFLICT DO NOTHING`` of the same rows (same UUIDv7 ids),
  one transaction per page-sized batch, into a copy of the same prefilled store.
- naive: the same pull, applied one event per transaction (one commit per event), on a
  subset of the events (its rate does not depend on the count).

The server runs in a child process; its log is bulk-loaded with raw SQL (not by REST pushes).
"""

from __future__ import annotations

import asyncio
import time

import benchlib as bl

PAGE = 500  # the engine's default page size, hence its commit size


async def run(smoke: bool, seed: int) -> None:
    n = bl.sized(100_000, smoke)
    n_naive = bl.sized(5_000, smoke, minimum=100)
    held = bl.sized(100_000, smoke)
    started = time.perf_counter()
    with bl.workdir() as tmp:
        events = list(bl.message_events(n, held + 1, seed=seed))
        bl.server_bulk_load(tmp / "server", "alice", events)
        bl.prefill_store(tmp / "template.db", held, cursor=held)
        for name in ("engine.db", "raw.db", "naive.db"):
            bl.copy_store(tmp / "template.db", tmp / name)

        # Baseline: raw executemany at the engine's commit size and id scheme.
        rows = [bl.message_row(ev) for ev in events]
        conn = bl.raw_connection(tmp / "raw.db")
        t = time.perf_counter()
        bl.raw_insert(conn, rows, PAGE)
        raw_s = time.perf_counter() - t
        conn.close()

        with bl.server_process(tmp / "server") as srv:
            engine = await bl.logged_in_engine(tmp / "engine.db", srv.url, "alice", page_size=PAGE)
            try:
                t = time.perf_counter()
                done = await engine.sync_once()
                engine_s = time.perf_counter() - t
                assert done.pulled == n, (done.pulled, n)
                assert engine.store.message_count() == held + n
            finally:
                await engine.close()
            naive_s = await _naive(tmp, srv.url, held, n_naive)

    engine_rate = n / engine_s
    raw_rate = n / raw_s
    naive_rate = n_naive / naive_s
    ratio = engine_rate / raw_rate
    bl.emit(
        "catch_up",
        f"catch-up: {n:,} events pulled into a store holding {held:,}",
        unit="events/s",
        value=engine_rate,
        baseline=raw_rate,
        ratio=ratio,
        target=">= 0.50 of raw (stretch 0.70), >= 1.5x naive",
        met=ratio >= 0.5 and engine_rate >= 1.5 * naive_rate,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        events=n,
        page=PAGE,
        naive=naive_rate,
        vs_naive=engine_rate / naive_rate,
        stretch_met=ratio >= 0.7,
    )


async def _naive(tmp: bl.Path, url: str, cursor: int, limit: int) -> float:
    """Pull the same pages and apply one event per transaction; seconds for ``limit`` events."""
    from syncengine.store import Store
    from syncengine.transport.rest import RestTransport

    transport = RestTransport(url)
    token = await transport.login("alice", "alice-password", "naive")
    transport.set_token(token)
    store = Store(tmp / "naive.db", user="alice")
    applied = 0
    try:
        t = time.perf_counter()
        while applied < limit:
            page = await transport.pull(cursor, PAGE)
            for ev in page.events[: limit - applied]:
                store.apply_events([ev], cursor=ev.pos)  # type: ignore[attr-defined]
                applied += 1
            cursor = page.next
            if not page.has_more:
                break
        return time.perf_counter() - t
    finally:
        store.close()
        await transport.aclose()


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
