"""Catch-up as users run it: whole processes, interpreter start-up included.

A user was away while 100,000 messages arrived (the server's log is bulk-loaded, as in
``bench_catchup.py``); their store holds 100,000 older ones with its cursor just before the
new ones. Each contender is a fresh process on its own copy of that logged-in store, timed
with the wall clock from spawn:

- cli: ``syncengine --db DB sync`` (``python -m syncengine.cli``), from spawn to exit. Its
  stdout and stderr are pipes (as in a script; no progress bar is drawn, the ticker runs).
- daemon: ``syncengine --db DB daemon``, from spawn until its store's cursor reaches the
  server's head (read from another connection every 5 ms); then SIGTERM by pid.
- baseline: ``bench/rawpull.py`` (a process too): the same pages (``limit=500``) from the same
  server with httpx, orjson decoding, ``INSERT ... ON CONFLICT DO NOTHING`` of 500 rows plus
  the cursor per ``BEGIN IMMEDIATE`` transaction, into a copy of the same store (the store's
  real schema and indexes, WAL, ``synchronous=FULL``). It runs before and after the two
  engine processes; the baseline is the mean of the two (drift hits both sides alike).

The ratios are of wall-clock rates, as the user waits. Each process's CPU time (user + system,
all threads) is reported too: ``cli_cpu_ratio`` is the raw loop's CPU seconds over the CLI's,
a cross-check that moves less when other work shares the cores.

The server runs with the benchmarks' raised rate limits (``bench_catchup_limits.py`` measures
the default ones). Every store is checked afterwards: cursor at the head, every message in.
"""

from __future__ import annotations

import asyncio
import time

import benchlib as bl

PAGE = 500  # the engine's default page size and the raw loop's commit size
TIMEOUT_S = 60.0
TARGET = ">= 0.50 of raw (stretch 0.70)"


async def run(smoke: bool, seed: int) -> None:
    n = bl.sized(100_000, smoke)
    held = bl.sized(100_000, smoke)
    started = time.perf_counter()
    with bl.workdir() as tmp:
        head = bl.catchup_setup(tmp, n, held, seed=seed)
        template = tmp / "template.db"
        with bl.server_process(tmp / "server") as srv:
            await bl.login_store(template, srv.url)
            raw_db = [bl.copy_account(template, tmp / f"raw{i}.db") for i in (1, 2)]
            cli_db = bl.copy_account(template, tmp / "cli.db")
            daemon_db = bl.copy_account(template, tmp / "daemon.db")

            raw1, raw1_doc = bl.run_raw_pull(srv.url, raw_db[0], held, PAGE, timeout=TIMEOUT_S)
            cli = bl.run_process(bl.cli_command(cli_db, "sync"), timeout=TIMEOUT_S)
            if cli.status != 0:
                raise SystemExit(f"syncengine sync exited {cli.status}: {cli.err.strip()[-2000:]}")
            daemon, _log = bl.run_daemon_until(daemon_db, head, timeout=TIMEOUT_S)
            raw2, raw2_doc = bl.run_raw_pull(srv.url, raw_db[1], held, PAGE, timeout=TIMEOUT_S)

        for db in (*raw_db, cli_db, daemon_db):
            got = bl.store_position(db)
            assert got == (head, held + n), (db.name, got, (head, held + n))
        assert raw1_doc["events"] == raw2_doc["events"] == n, (raw1_doc, raw2_doc)

    raw_s = (raw1.seconds + raw2.seconds) / 2
    raw_cpu = (raw1.cpu + raw2.cpu) / 2
    raw_rate = n / raw_s
    cli_rate = n / cli.seconds
    daemon_rate = n / daemon.seconds
    cli_ratio = cli_rate / raw_rate
    daemon_ratio = daemon_rate / raw_rate
    daemon_row = {
        "figure": f"catch-up as users run it: `syncengine daemon` until {n:,} new events are in",
        "unit": "events/s",
        "value": round(daemon_rate, 1),
        "baseline": round(raw_rate, 1),
        "ratio": round(daemon_ratio, 4),
        "target": TARGET,
        "met": daemon_ratio >= 0.5,
    }
    bl.emit(
        "cli_catch_up",
        f"catch-up as users run it: `syncengine sync` process, {n:,} new events "
        f"(store holding {held:,})",
        unit="events/s",
        value=cli_rate,
        baseline=raw_rate,
        ratio=cli_ratio,
        target=TARGET,
        met=cli_ratio >= 0.5 and daemon_ratio >= 0.5,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        events=n,
        page=PAGE,
        cli_s=cli.seconds,
        daemon_s=daemon.seconds,
        daemon=daemon_rate,
        daemon_ratio=daemon_ratio,
        raw_s=[round(raw1.seconds, 3), round(raw2.seconds, 3)],
        raw_in_process_s=[round(raw1_doc["seconds"], 3), round(raw2_doc["seconds"], 3)],
        cpu_s={"cli": cli.cpu, "daemon": daemon.cpu, "raw": raw_cpu},
        cli_cpu_ratio=raw_cpu / cli.cpu,
        daemon_cpu_ratio=raw_cpu / daemon.cpu,
        cli_met=cli_ratio >= 0.5,
        daemon_met=daemon_ratio >= 0.5,
        stretch_met=min(cli_ratio, daemon_ratio) >= 0.7,
        more=[daemon_row],
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
