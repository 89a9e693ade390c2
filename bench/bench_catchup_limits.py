"""Catch-up against the reference server's default request-rate limits (issue 17).

Since issue 17, pulls draw from a budget of their own (``pull_rate_per_s`` = 1000 pages/s,
``pull_burst`` = 2000; ``serve --pull-rate/--pull-burst``), and the figures below measure
that budget; ``cap_events_per_s`` and ``floor_s`` are computed from it. Before, the server
limited each user's REST requests with one token bucket (``ServerConfig``'s
``rate_per_s`` = 50 requests/s, ``rate_burst`` = 100; ``syncengine serve`` has no option for
them). A pull page costs one token whatever it holds, so once the burst is spent a catch-up of
500-event pages is capped at 50 x 500 = 25,000 events/s: a catch-up of P pages cannot end in
less than (P - 100) / 50 seconds (100,000 events: 2 s; 300,000: 10 s; 1,000,000: 38 s). A
client slower than 50 pages/s never meets the limit, so whether a catch-up meets it depends on
the client's speed and on the machine's load. To measure the limit itself, whatever the load:

- 300,000 events are pulled by ``rawpull.py PULL`` (a process: pull + orjson decode, nothing
  written: the fastest a client can ask for pages; what a faster engine would ask for);
- baseline: against the server with the benchmarks' raised limits;
- value: against the server with its **default** limits; the client waits out each ``429``
  (``retry_after_ms``) and counts them; ``throttled_rate`` is its rate after the first ``429``
  (the sustained cap);
- how the engine meets a ``429`` (limits lowered to 2 requests/s, burst 4, so that any client
  exceeds them): ``syncengine sync`` (exit status, events pulled before it stopped) and the
  daemon over a fixed window (events/s against the cap of 2 x 500, ``429`` s in its log).

Server processes run in turn on the same data directory (the token stays valid). Target: a
catch-up is not throttled by the limit meant for abuse (no ``429``, >= 0.90 of the rate with
raised limits).
"""

from __future__ import annotations

import asyncio
import time

import benchlib as bl

PAGE = 500
TIMEOUT_S = 45.0
WINDOW_S = 5.0  # the daemon's run against the lowered limits


async def run(smoke: bool, seed: int) -> None:
    n = bl.sized(300_000, smoke)
    held = bl.sized(10_000, smoke)
    limits = bl.default_limits()
    low = {"rate_per_s": 2.0, "rate_burst": 4, "pull_rate_per_s": 2.0, "pull_burst": 4}
    started = time.perf_counter()
    with bl.workdir() as tmp:
        bl.catchup_setup(tmp, n, held, seed=seed)
        template = tmp / "template.db"
        names = ("pull_raised", "pull_default", "cli_low", "daemon_low")
        dbs = {name: tmp / f"{name}.db" for name in names}
        with bl.server_process(tmp / "server") as srv:  # raised limits
            await bl.login_store(template, srv.url)
            for db in dbs.values():
                bl.copy_account(template, db)
            raised, raised_doc = bl.run_raw_pull(
                srv.url, dbs["pull_raised"], held, PAGE, timeout=TIMEOUT_S, mode="PULL"
            )
        with bl.server_process(tmp / "server", **limits) as srv:  # the default limits
            default, default_doc = bl.run_raw_pull(
                srv.url, dbs["pull_default"], held, PAGE, timeout=TIMEOUT_S, mode="PULL"
            )
        with bl.server_process(tmp / "server", **low) as srv:  # any client exceeds these
            for db in (dbs["cli_low"], dbs["daemon_low"]):
                bl.point_store_at(db, srv.url)
            cli_low = bl.run_process(bl.cli_command(dbs["cli_low"], "sync"), timeout=TIMEOUT_S)
            time.sleep(0.0 if smoke else low["pull_burst"] / low["pull_rate_per_s"])  # refill
            window = 1.0 if smoke else WINDOW_S
            daemon_pulled, daemon_log = bl.run_daemon_for(dbs["daemon_low"], window)
        assert raised_doc["events"] == default_doc["events"] == n, (raised_doc, default_doc)
        assert raised_doc["throttled"] == 0, raised_doc
        cli_low_pulled = bl.store_position(dbs["cli_low"])[0] - held

    raised_rate = n / raised_doc["seconds"]
    default_rate = n / default_doc["seconds"]
    ratio = default_rate / raised_rate
    throttled = default_doc["throttled"]
    sustained = None
    if default_doc["first_429_s"] is not None:
        after_events = n - default_doc["first_429_events"]
        after_s = default_doc["seconds"] - default_doc["first_429_s"]
        sustained = after_events / after_s if after_s > 0 else None
    pages = -(-n // PAGE)
    bl.emit(
        "catch_up_limits",
        f"catch-up pulls ({n:,} events) under the server's default rate limit "
        f"(pulls {limits['pull_rate_per_s']:g}/s, burst {limits['pull_burst']})",
        unit="events/s",
        value=default_rate,
        baseline=raised_rate,
        ratio=ratio,
        target="no 429, >= 0.90 of the same pulls with raised limits",
        met=throttled == 0 and ratio >= 0.9,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        events=n,
        page=PAGE,
        throttled_429=throttled,
        throttled_rate=sustained,
        first_429_after_events=default_doc["first_429_events"],
        cap_events_per_s=limits["pull_rate_per_s"] * PAGE,
        floor_s=max(0.0, (pages - limits["pull_burst"]) / limits["pull_rate_per_s"]),
        pull_s={"raised": raised_doc["seconds"], "default": default_doc["seconds"]},
        process_s={"raised": raised.seconds, "default": default.seconds},
        low_limits=low,
        cli_low={
            "status": cli_low.status,
            "seconds": cli_low.seconds,
            "pulled": cli_low_pulled,
            "refused_429": cli_low.status != 0 and "rate_limited" in cli_low.err,
            "error": _last_line(cli_low.err) if cli_low.status else "",
        },
        daemon_low={
            "window_s": window,
            "pulled": daemon_pulled,
            "events_per_s": daemon_pulled / window,
            "cap_events_per_s": low["pull_rate_per_s"] * PAGE,
            "rate_limited_in_log": daemon_log.count("rate_limited"),
        },
    )


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else ""


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
