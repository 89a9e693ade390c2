"""Memory while catching up a long event log: the engine's RSS must stay flat (streaming).

The reference server (child process, so its memory is not counted) holds a bulk-loaded log;
the engine pulls all of it with ``sync_once()`` while a thread samples this process's RSS.
Growth is the peak RSS during the catch-up minus the RSS just before it.

The figure asks for 1M events; a full run pulls 300k so that it stays under 60 s on this
machine kind (at ~25-40k events/s, 1M would take 25-40 s of pulling alone, plus the load of
the server's log). RSS stays flat because nothing is kept per event beyond a bounded window
(the last 50k positions, to emit each event once), so the count does not change the result;
``--events`` runs any other count.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import benchlib as bl

LIMIT_MB = 100.0


async def run(smoke: bool, seed: int, n: int) -> None:
    started = time.perf_counter()
    with bl.workdir() as tmp:
        bl.server_bulk_load(tmp / "server", "alice", bl.message_events(n, 1, seed=seed))
        with bl.server_process(tmp / "server") as srv:
            engine = await bl.logged_in_engine(tmp / "engine.db", srv.url, "alice")
            try:
                before = bl.rss_bytes()
                t = time.perf_counter()
                with bl.RssSampler() as sampler:
                    done = await engine.sync_once()
                pull_s = time.perf_counter() - t
                assert done.pulled == n, (done.pulled, n)
            finally:
                await engine.close()
    growth_mb = (sampler.peak - before) / 2**20
    bl.emit(
        "memory",
        f"memory: RSS growth while catching up {n:,} events",
        unit="MB",
        value=growth_mb,
        baseline=None,
        ratio=None,
        target=f"RSS growth < {LIMIT_MB:.0f} MB (flat)",
        met=growth_mb < LIMIT_MB,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        events=n,
        rss_before_mb=before / 2**20,
        rss_peak_mb=sampler.peak / 2**20,
        events_per_s=n / pull_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args()
    n = args.events or bl.sized(300_000, args.smoke, fraction=0.01)
    asyncio.run(run(args.smoke, args.seed, n))


if __name__ == "__main__":
    main()
