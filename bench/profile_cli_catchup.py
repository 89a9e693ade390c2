"""Where the time of a catch-up goes when users run it (issue 17): the numbers behind the
section "Catch-up as users run it" of docs/performance.md.

    .venv/bin/python bench/profile_cli_catchup.py            # every section, ~5 minutes
    .venv/bin/python bench/profile_cli_catchup.py startup probe --json out.json

Not a benchmark (no BENCH line, not run by ``run_all.py``): a measuring tool. Sections:

- ``startup``: interpreter start, ``import syncengine.cli``, a read command (``status``), and
  ``-X importtime`` of a real ``syncengine sync`` (which modules cost what).
- ``probe``: ``syncengine sync`` and ``syncengine daemon`` run under ``cli_probe.py`` (timers
  around the loop's ``select``, the requests, decoding, the apply, the progress ticker's
  store reads): the process's phases, and inside the catch-up the loop thread's idle share,
  split into waiting for the apply thread and waiting for the server.
- ``variants``: ``syncengine sync`` under the probe with one thing changed (no progress
  ticker, every apply on the loop thread, a 1 ms GIL switch interval), in alternating rounds.
- ``pyspy``: ``py-spy record --idle --threads`` of ``syncengine sync`` (only if py-spy is
  installed: ``pip install py-spy``), samples grouped by thread and by what they were in.
- ``objects``: per-event costs of decoding one real 500-event page (orjson alone, the
  engine's ``decode_page``, the ``MessageReceived`` objects) and of applying it
  (``Store.apply_events`` against the raw insert, and the extra statements of the apply).
- ``indexes``: 100,000 inserts (500 per commit) into a store of 100,000 with the real schema,
  and with each secondary index of ``messages`` dropped in turn (on copies).
- ``history``: ``bench_history.py`` run several times (its ratio's spread), and what a
  ``messages(limit=50)`` call spends.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib as bl

PAGE = 500
N = 100_000
HELD = 100_000
SECTIONS = ("startup", "probe", "variants", "pyspy", "objects", "indexes", "history")
INDEXES = ("messages_conv_seq", "messages_id", "messages_sender_op")

report: dict[str, Any] = {}


def out(text: str = "") -> None:
    print(text, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


# --- the scenario --------------------------------------------------------------------------------


class Scenario:
    """The catch-up of bench_cli_catchup.py: server process, logged-in template store."""

    def __init__(self, tmp: Path, n: int, held: int, seed: int = 1234) -> None:
        self.tmp, self.n, self.held = tmp, n, held
        self.head = bl.catchup_setup(tmp, n, held, seed=seed)
        self.server = bl.server_process(tmp / "server")
        self.url = self.server.url
        asyncio.run(bl.login_store(tmp / "template.db", self.url))
        self._copies = 0

    def copy(self) -> Path:
        self._copies += 1
        return bl.copy_account(self.tmp / "template.db", self.tmp / f"copy{self._copies}.db")

    def close(self) -> None:
        self.server.stop()


def _spawn(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 90) -> bl.Run:
    return bl.run_process(cmd, timeout=timeout, env=env)


# --- start-up ------------------------------------------------------------------------------------


def section_startup(sc: Scenario) -> None:
    out("## start-up")
    py = sys.executable
    reps = 5
    bare = [_spawn([py, "-c", "pass"]).seconds for _ in range(reps)]
    imp = [_spawn([py, "-c", "import syncengine.cli"]).seconds for _ in range(reps)]
    raw_imp = [_spawn([py, "-c", "import httpx, orjson, sqlite3"]).seconds for _ in range(reps)]
    db = sc.copy()
    status = [_spawn(bl.cli_command(db, "status")).seconds for _ in range(reps)]
    doc = {
        "python_-c_pass_s": statistics.median(bare),
        "import_syncengine_cli_s": statistics.median(imp),
        "import_httpx_orjson_s": statistics.median(raw_imp),
        "syncengine_status_s": statistics.median(status),
    }
    out(
        f"median of {reps}: python -c pass {ms(doc['python_-c_pass_s'])}; "
        f"import syncengine.cli {ms(doc['import_syncengine_cli_s'])}; "
        f"import httpx, orjson, sqlite3 (the raw loop's) {ms(doc['import_httpx_orjson_s'])}; "
        f"syncengine status (whole process) {ms(doc['syncengine_status_s'])}"
    )
    # -X importtime of a real sync: every module it imports, lazy ones included.
    run = _spawn([py, "-X", "importtime", "-m", "syncengine.cli", "--db", str(sc.copy()), "sync"])
    assert run.status == 0, run.err[-2000:]
    rows = []
    for line in run.err.splitlines():
        parts = line[len("import time:") :].split("|")
        if not line.startswith("import time:") or len(parts) != 3:
            continue
        try:
            self_t, cum_t = int(parts[0]), int(parts[1])
        except ValueError:  # the header line
            continue
        name = parts[2]
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append((name.strip(), self_t, cum_t, depth))
    top_level = [r for r in rows if r[3] == 0]
    total = sum(r[2] for r in top_level) / 1e6
    by_cum = sorted(top_level, key=lambda r: -r[2])[:15]
    doc["importtime_total_s"] = total
    doc["importtime_top"] = [(name, cum / 1e6) for name, _s, cum, _d in by_cum]
    out(
        f"-X importtime of `syncengine sync`: {len(rows)} modules, {ms(total)} in imports "
        f"(top-level cumulative; the flag itself inflates this a little); the largest:"
    )
    for name, cum in doc["importtime_top"]:
        out(f"  {name:40s} {ms(cum)}")
    # Selected packages, wherever they were first imported from.
    wanted = (
        "syncengine.server.cli",
        "syncengine.server",
        "rich.progress",
        "rich",
        "httpx",
        "sqlite_utils",
        "cattrs",
        "attrs",
        "click",
        "stamina",
        "websockets",
        "syncengine.engine",
        "syncengine.store",
        "syncengine.wire",
        "syncengine.events",
        "platformdirs",
        "filelock",
        "apscheduler",
        "uvicorn",
        "starlette",
        "asyncio",
        "ssl",
    )
    cums = {}
    for name, _s, cum, _d in rows:
        if name in wanted and name not in cums:
            cums[name] = cum / 1e6
    doc["importtime_packages"] = cums
    out(
        "  selected (cumulative where first imported): "
        + ", ".join(f"{k} {ms(v)}" for k, v in sorted(cums.items(), key=lambda kv: -kv[1]))
    )
    report["startup"] = doc


# --- the probe -----------------------------------------------------------------------------------


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, merged interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _clip(intervals: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi]


def analyse_probe(doc: dict[str, Any], parent_s: float, n: int) -> dict[str, Any]:
    m = doc["marks"]
    w0, w1 = m["first_pull"], m["catch_up_end"]
    window = w1 - w0
    idle = _union(_clip([tuple(x) for x in doc["idle"]], w0, w1))
    applies = doc["applies"]
    apply_iv = _union([(a["t0"], a["t1"]) for a in applies])
    pull_iv = _union([tuple(p) for p in doc["pulls"]])
    idle_s = sum(b - a for a, b in idle)
    idle_apply = _overlap(idle, apply_iv)
    idle_pull_only = _overlap(idle, [(a, b) for a, b in _subtract(pull_iv, apply_iv)])
    apply_wall = sum(a["t1"] - a["t0"] for a in applies)
    apply_cpu = sum(a["cpu"] for a in applies)
    decode_s = sum(b - a for a, b, _n in doc["decodes"])
    decoded = sum(k for _a, _b, k in doc["decodes"])
    reads = [(a, b) for a, b in doc["cursor_reads"] if w0 <= a <= w1]
    read_s = [b - a for a, b in reads]
    blocked = sum(1 for a, b in reads if _overlap([(a, b)], apply_iv) > 0)
    emit_s = sum(doc["emits"])
    loop_apply = sum(a["t1"] - a["t0"] for a in applies if a["loop_thread"])
    busy_other = window - idle_s - decode_s - sum(read_s) - emit_s - loop_apply
    pull_lat = [b - a for a, b in doc["pulls"]]
    res = {
        "process_s": parent_s,
        "interpreter_start_s": m["start"] - m["spawn"] if "spawn" in m else None,
        "import_cli_s": m["imported_cli"] - m["start"],
        "import_engine_daemon_s": m["imported_daemon"] - m["imported_cli"],
        "setup_to_first_pull_s": w0 - m["imported_daemon"],
        "catch_up_s": window,
        "after_catch_up_s": m["exit"] - w1,
        "teardown_s": (m["spawn"] + parent_s - doc["end"]) if "spawn" in m else None,
        "requests_before_pull": sum(1 for a, _b, _p in doc["requests"] if a < w0),
        "pages": len(doc["pulls"]),
        "loop_idle_s": idle_s,
        "loop_idle_share": idle_s / window,
        "loop_idle_waiting_apply_s": idle_apply,
        "loop_idle_waiting_server_only_s": idle_pull_only,
        "decode_s": decode_s,
        "decode_us_per_event": decode_s / max(1, decoded) * 1e6,
        "apply_wall_s": apply_wall,
        "apply_cpu_s": apply_cpu,
        "apply_us_per_event": apply_wall / max(1, n) * 1e6,
        "apply_cpu_us_per_event": apply_cpu / max(1, n) * 1e6,
        "apply_on_loop_thread": sum(1 for a in applies if a["loop_thread"]),
        "apply_in_flight_share": sum(b - a for a, b in apply_iv) / window,
        "ticker_reads": len(reads),
        "ticker_total_s": sum(read_s),
        "ticker_mean_ms": statistics.mean(read_s) * 1000 if read_s else 0.0,
        "ticker_max_ms": max(read_s) * 1000 if read_s else 0.0,
        "ticker_blocked_behind_apply": blocked,
        "emit_new_s": emit_s,
        "loop_busy_other_s": busy_other,
        "pull_latency_ms_median": statistics.median(pull_lat) * 1000 if pull_lat else 0.0,
    }
    ordered = sorted(applies, key=lambda a: a["t0"])
    pairs = list(itertools.pairwise(ordered))
    gaps = [b["t0"] - a["t1"] for a, b in pairs]
    pull_ends = sorted(b for _a, b in doc["pulls"])
    # A gap is "waiting for the page" when the next page's pull ended after the apply before.
    late = 0
    for a, b in pairs:
        ended = [e for e in pull_ends if e <= b["t0"]]
        if ended and ended[-1] > a["t1"]:
            late += 1
    reads0 = [r0 for r0, _r1 in doc["cursor_reads"]]
    res["apply_gaps_total_s"] = sum(gaps)
    res["apply_gap_ms_median"] = statistics.median(gaps) * 1000 if gaps else 0.0
    res["apply_gap_ms_p90"] = bl.percentile(gaps, 90) * 1000 if gaps else 0.0
    res["gaps_waiting_for_next_page"] = late
    res["gaps_with_a_ticker_read"] = sum(
        1 for a, b in pairs if any(a["t1"] <= r <= b["t0"] for r in reads0)
    )
    res["cpu_s"] = doc.get("cpu")
    before: dict[str, float] = {}
    for name, a, b in doc["spans"]:
        if a < w0:
            before[name] = before.get(name, 0.0) + (min(b, w0) - a)
    res["before_first_pull"] = {k: round(v * 1000, 1) for k, v in before.items()}
    after: dict[str, float] = {}
    for name, a, b in doc["spans"]:
        if a >= w1:
            after[name] = after.get(name, 0.0) + (b - a)
    res["after_catch_up"] = {k: round(v * 1000, 1) for k, v in after.items()}
    return res


def _subtract(
    a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """a minus b (both merged, sorted)."""
    result = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi <= cur or blo >= hi:
                continue
            if blo > cur:
                result.append((cur, blo))
            cur = max(cur, bhi)
        if cur < hi:
            result.append((cur, hi))
    return result


def _probe(sc: Scenario, command: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    db = sc.copy()
    out_path = sc.tmp / f"probe-{command}.json"
    probe = [sys.executable, str(bl.HERE / "cli_probe.py"), str(out_path), "--db", str(db)]
    if command == "sync":
        env = {"SPAWN_MONOTONIC": repr(time.monotonic()), **(extra_env or {})}
        run = _spawn([*probe, "sync"], env=env)
        assert run.status == 0, run.err[-2000:]
        parent_s = run.seconds
    else:
        import signal

        env = {**os.environ, "SPAWN_MONOTONIC": repr(time.monotonic())}
        t = time.perf_counter()
        proc = subprocess.Popen(
            [*probe, "daemon"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            while time.perf_counter() - t < 90:
                row = conn.execute("SELECT pos FROM cursors WHERE stream='events'").fetchone()
                if row and row[0] >= sc.head:
                    break
                time.sleep(0.005)
        finally:
            conn.close()
        parent_s = time.perf_counter() - t
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    doc = json.loads(out_path.read_text())
    doc["end"] = float(Path(f"{out_path}.end").read_text())
    assert bl.store_position(db) == (sc.head, sc.held + sc.n)
    res = analyse_probe(doc, parent_s, sc.n)
    if command == "daemon":
        # The daemon has no exit at the head: its "process" ends when the cursor got there.
        res["after_catch_up_s"] = None
        res["teardown_s"] = None
        res["after_catch_up"] = {}
    return res


VARIANTS: dict[str, dict[str, str]] = {
    "as shipped": {},
    "no progress ticker": {"PROBE_NO_TICKER": "1"},
    "apply on the loop thread": {"PROBE_APPLY_ON_LOOP": "1"},
    "GIL switch interval 1 ms": {"PROBE_SWITCH_INTERVAL": "0.001"},
}


def section_variants(sc: Scenario, rounds: int = 2) -> None:
    """`syncengine sync` under the probe with one thing changed, in turn, same session."""
    out("## variants of `syncengine sync` (probe; rounds in alternating order)")
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    raws: list[float] = []
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        raws.append(bl.run_raw_pull(sc.url, sc.copy(), sc.held, PAGE)[0].seconds)
        for name in order:
            got[name].append(_probe(sc, "sync", VARIANTS[name]))
    raw = statistics.mean(raws)
    out(f"raw loop process, mean of {rounds}: {raw:.2f} s")
    doc: dict[str, Any] = {"raw_s": raws}
    for name, runs in got.items():
        proc = statistics.mean(x["process_s"] for x in runs)
        window = statistics.mean(x["catch_up_s"] for x in runs)
        idle = statistics.mean(x["loop_idle_share"] for x in runs)
        gaps = statistics.mean(x["apply_gaps_total_s"] for x in runs)
        cpu = statistics.mean(x["cpu_s"] for x in runs)
        doc[name] = {
            "process_s": proc,
            "catch_up_s": window,
            "idle": idle,
            "gaps_s": gaps,
            "cpu_s": cpu,
        }
        out(
            f"  {name:28s} process {proc:.2f} s (ratio {raw / proc:.2f}), catch-up "
            f"{window:.2f} s, loop idle {idle:.0%}, apply gaps {gaps:.2f} s, CPU {cpu:.2f} s"
        )
    report["variants"] = doc


def section_probe(sc: Scenario) -> None:
    out("## probe: phases of the process, and the catch-up's loop thread")
    raw, raw_doc = bl.run_raw_pull(sc.url, sc.copy(), sc.held, PAGE)
    out(
        f"raw loop process (same run): {raw.seconds:.2f} s wall, {raw.cpu:.2f} s CPU; "
        f"in-process loop {raw_doc['seconds']:.2f} s, start-up + imports "
        f"{raw.seconds - raw_doc['seconds']:.2f} s"
    )
    normal, normal_doc = bl.run_raw_pull(sc.url, sc.copy(), sc.held, PAGE, mode="NORMAL")
    out(
        f"raw loop with synchronous=NORMAL (no fsync per commit; the store uses FULL): "
        f"{normal.seconds:.2f} s wall, {normal.cpu:.2f} s CPU; "
        f"in-process {normal_doc['seconds']:.2f} s"
    )
    results: dict[str, Any] = {
        "raw_s": raw.seconds,
        "raw_cpu_s": raw.cpu,
        "raw_loop_s": raw_doc["seconds"],
        "raw_normal_s": normal.seconds,
        "raw_normal_loop_s": normal_doc["seconds"],
    }
    for command in ("sync", "daemon"):
        res = _probe(sc, command)
        results[command] = res
        out(
            f"### syncengine {command}: {res['process_s']:.2f} s from spawn "
            f"(raw loop {raw.seconds:.2f} s: ratio {raw.seconds / res['process_s']:.2f})"
        )
        for key, val in res.items():
            if val is None:
                continue
            if isinstance(val, dict):
                out(f"  {key} (ms): " + ", ".join(f"{k} {v:,.1f}" for k, v in val.items()))
                continue
            if key.endswith("_s"):
                out(f"  {key:36s} {ms(val)}")
            elif isinstance(val, float):
                out(f"  {key:36s} {val:,.3f}")
            else:
                out(f"  {key:36s} {val}")
    report["probe"] = results


# --- py-spy ---------------------------------------------------------------------------------------


def _loop_category(frames: list[str]) -> str:
    """What a sample of the loop (main) thread was doing; the first rule that holds wins."""
    if not frames:
        return "no Python frame (interpreter start/teardown, native)"
    text = ";".join(frames)
    leaf = frames[-1]
    if "importlib" in text:
        return "imports"
    if leaf.startswith("EpollSelector.select") or leaf.startswith("select ("):
        return "idle: select (waiting)"
    if "Store.cursor" in text:
        return "progress ticker: Store.cursor (RLock wait + read)"
    if "decode_page" in text:
        return "decode: wire.decode_page (orjson + MessageReceived)"
    if "create_default_context" in text or "load_verify_locations" in text:
        return "ssl.create_default_context (httpx client set-up)"
    if "syncengine/store/" in text:
        return "store, other (open, conversations, health, close)"
    if any(k in text for k in ("httpx/", "httpcore/", "h11/", "anyio/")):
        return "transport: httpx/httpcore/h11/anyio"
    if "rich/" in text:
        return "rich"
    if "_emit" in text:
        return "engine: emit"
    if "asyncio/" in text:
        return "asyncio machinery (tasks, futures, to_thread hand-off)"
    return "other: " + leaf.split(" (")[0]


def _worker_category(frames: list[str]) -> str:
    """What a sample of an apply (``asyncio.to_thread``) thread was doing."""
    text = ";".join(frames)
    if "apply_events" not in text and "_apply_safely" not in text:
        return "idle: waiting for work"
    if frames[-1].startswith("StoreDB.write ("):
        line = _line_of(frames[-1])
        if "COMMIT" in line:
            return "COMMIT (WAL page writes + fsync)"
        if "BEGIN" in line:
            return "BEGIN IMMEDIATE"
        return "StoreDB.write: " + line.strip()[:40]
    for frame in reversed(frames):
        if frame.startswith("Store.apply_events ("):
            return (
                "SQL statements (executemany...)"
                if "c.execute" in _line_of(frame)
                or "_set_cursor" in _line_of(frame)
                or _line_of(frame).strip().startswith(('"', "(", "[", ")"))
                else "apply: Python part"
            )
    return "apply: other (" + frames[-1].split(" (")[0] + ")"


_SOURCE: dict[str, list[str]] = {}


def _line_of(frame: str) -> str:
    """The source line a py-spy frame ``name (path:line)`` points at (syncengine files only)."""
    try:
        path, line = frame.rsplit(" (", 1)[1].rstrip(")").rsplit(":", 1)
    except (IndexError, ValueError):
        return ""
    if not path.startswith("syncengine/"):
        return ""
    if path not in _SOURCE:
        full = bl.HERE.parent / path
        _SOURCE[path] = full.read_text().splitlines() if full.exists() else []
    lines = _SOURCE[path]
    k = int(line) - 1
    return lines[k] if 0 <= k < len(lines) else ""


def section_pyspy(sc: Scenario) -> None:
    out("## py-spy: samples of `syncengine sync` by thread and activity")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        out("py-spy is not installed (pip install py-spy): section skipped")
        return
    report["pyspy"] = {}
    for idle in (True, False):
        _pyspy(sc, spy, idle)


def _pyspy(sc: Scenario, spy: str, idle: bool) -> None:
    """One py-spy run. With ``--idle`` every thread is sampled whatever it does (waiting for
    the GIL, a lock or the disk included); without, only threads running on a CPU."""
    db = sc.copy()
    raw_path = sc.tmp / f"pyspy-{idle}.txt"
    flags = ["--idle"] if idle else []
    cmd = [spy, "record", *flags, "--threads", "--rate", "250", "--format", "raw"]
    cmd += ["-o", str(raw_path), "--", *bl.cli_command(db, "sync")]
    run = _spawn(cmd)
    if run.status != 0 or not raw_path.exists():
        out(f"py-spy failed ({run.status}): {run.err.strip()[-500:]}")
        return
    samples = []
    main_ids = set()
    for line in raw_path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        frames = stack_text.split(";")
        tid = frames[0].split(")")[0]  # "thread (1234"
        samples.append((tid, frames[1:], int(count)))
        if "MainThread" in frames[0] or "_run_module_as_main" in stack_text:
            main_ids.add(tid)
    threads: dict[str, dict[str, int]] = {}
    for tid, frames, count in samples:
        if tid in main_ids:
            label, cat = "loop thread (main)", _loop_category(frames)
        else:
            label, cat = "apply threads (asyncio.to_thread)", _worker_category(frames)
        threads.setdefault(label, {})
        threads[label][cat] = threads[label].get(cat, 0) + count
    # py-spy samples at 250 Hz when it keeps up; under load it falls behind, so samples are
    # turned into time through the run's wall clock (the loop thread is sampled throughout).
    main_total = sum(threads.get("loop thread (main)", {}).values()) or 1
    per_sample_ms = run.seconds * 1000 / main_total if idle else 4.0
    mode = "--idle (every thread, waiting or not)" if idle else "on-CPU samples only"
    out(f"### py-spy {mode}: `syncengine sync` took {run.seconds:.2f} s under py-spy")
    doc: dict[str, Any] = {}
    for label, cats in sorted(threads.items()):
        total = sum(cats.values())
        doc[label] = {k: v * per_sample_ms for k, v in cats.items()}
        out(f"  {label}: {total} samples")
        for cat, cnt in sorted(cats.items(), key=lambda kv: -kv[1])[:12]:
            out(f"    {cat:55s} {cnt / total:6.1%}  (~{cnt * per_sample_ms:,.0f} ms)")
    report["pyspy"]["idle" if idle else "on_cpu"] = doc


# --- per-event objects and the apply --------------------------------------------------------------


def _best(fn: Any, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def section_objects(sc: Scenario) -> None:
    out("## per-event costs (one real 500-event page, best of several)")
    import httpx
    import orjson

    from syncengine import wire
    from syncengine.events import MessageReceived
    from syncengine.store import Store

    token = orjson.loads(Path(f"{sc.tmp / 'template.db'}.token").read_bytes())["token"]
    pages: list[bytes] = []
    with httpx.Client(base_url=sc.url, headers={"Authorization": f"Bearer {token}"}) as client:
        since = sc.held
        for _ in range(40):  # 20,000 events
            body = client.get("/v1/events", params={"since": since, "limit": PAGE}).content
            pages.append(body)
            since = orjson.loads(body)["next"]
    page = pages[0]
    dicts = orjson.loads(page)["events"]
    k = len(dicts)
    t_orjson = _best(lambda: orjson.loads(page), 30) / k
    t_decode = _best(lambda: wire.decode_page(page), 30) / k
    t_event = _best(lambda: [wire.decode_event(d) for d in dicts], 30) / k
    t_attrs = (
        _best(
            lambda: [
                MessageReceived(**{kk: v for kk, v in d.items() if kk != "type"}) for d in dicts
            ],
            30,
        )
        / k
    )
    t_tuple = (
        _best(
            lambda: [
                (
                    d["conversation_id"],
                    d["seq"],
                    d["message_id"],
                    d.get("op_id"),
                    d["sender"],
                    d["body"],
                    d["ts_ms"] / 1000,
                )
                for d in dicts
            ],
            30,
        )
        / k
    )
    doc = {
        "orjson_loads_us": t_orjson * 1e6,
        "decode_page_us": t_decode * 1e6,
        "decode_event_us": t_event * 1e6,
        "message_received_init_us": t_attrs * 1e6,
        "raw_row_tuple_us": t_tuple * 1e6,
    }
    out(
        f"decoding, per event: orjson.loads {doc['orjson_loads_us']:.2f} µs; wire.decode_page "
        f"{doc['decode_page_us']:.2f} µs (of which decode_event {doc['decode_event_us']:.2f} µs; "
        f"a MessageReceived built from a dict {doc['message_received_init_us']:.2f} µs); "
        f"the raw loop's row tuple {doc['raw_row_tuple_us']:.2f} µs"
    )

    # Apply: Store.apply_events vs the raw insert (+ cursor), and the raw insert + cursor + the
    # apply's per-conversation statements, page after page on three copies of the store.
    decoded = [wire.decode_page(p) for p in pages]
    store = Store(sc.copy())
    raw = bl.raw_connection(sc.copy())
    extra = bl.raw_connection(sc.copy())
    cursor_sql = (
        "INSERT INTO cursors(stream, pos, updated_at) VALUES ('events', ?, 0) "
        "ON CONFLICT(stream) DO UPDATE SET pos = excluded.pos"
    )
    t_store = t_raw = t_extra = t_prep = 0.0
    for pg in decoded:
        rows = [
            (e.conversation_id, e.seq, e.message_id, e.op_id, e.sender, e.body, e.ts_ms / 1000)
            for e in pg.events
        ]
        seqs: dict[str, int] = {}
        for e in pg.events:
            seqs[e.conversation_id] = max(seqs.get(e.conversation_id, 0), e.seq)
        t = time.perf_counter()
        store.apply_events(pg.events, cursor=pg.next)
        t_store += time.perf_counter() - t
        t = time.perf_counter()
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany(bl.RAW_INSERT, rows)
        raw.execute(cursor_sql, (pg.next,))
        raw.execute("COMMIT")
        t_raw += time.perf_counter() - t
        t = time.perf_counter()
        extra.execute("BEGIN IMMEDIATE")
        extra.executemany(
            "INSERT INTO conversations(id, created_at) VALUES (?, ?) ON CONFLICT(id) DO NOTHING",
            [(c, 0.0) for c in seqs],
        )
        extra.executemany(bl.RAW_INSERT, rows)
        extra.executemany(
            "UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ?",
            [(q, c) for c, q in seqs.items()],
        )
        extra.execute(cursor_sql, (pg.next,))
        extra.execute("COMMIT")
        t_extra += time.perf_counter() - t
    events = sum(len(pg.events) for pg in decoded)

    # The apply's Python part alone: the same loop over the events, stopped before any SQL.
    class _Stop(Exception):
        pass

    class _NoDB:
        def write(self) -> Any:
            raise _Stop

    fake = Store.__new__(Store)
    fake._db = _NoDB()  # type: ignore[assignment]
    fake.user = "alice"
    fake._clock = time.time  # type: ignore[assignment]
    for pg in decoded:
        t = time.perf_counter()
        try:
            fake.apply_events(pg.events, cursor=pg.next)
        except _Stop:
            pass
        t_prep += time.perf_counter() - t
    convs_per_page = statistics.mean(len({e.conversation_id for e in pg.events}) for pg in decoded)
    store.close()
    raw.close()
    extra.close()
    doc.update(
        {
            "apply_us": t_store / events * 1e6,
            "raw_insert_us": t_raw / events * 1e6,
            "raw_plus_conv_statements_us": t_extra / events * 1e6,
            "apply_python_part_us": t_prep / events * 1e6,
            "conversations_per_page": convs_per_page,
        }
    )
    out(
        f"apply, per event ({events:,} events, {len(decoded)} pages, one transaction a page, in "
        f"turn on three copies): Store.apply_events {doc['apply_us']:.2f} µs; raw insert + "
        f"cursor {doc['raw_insert_us']:.2f} µs (apply x{doc['apply_us'] / doc['raw_insert_us']:.2f}"
        f"); raw + the apply's conversation statements ({convs_per_page:.0f} conversations a "
        f"page: upsert + last_seq) {doc['raw_plus_conv_statements_us']:.2f} µs; the apply's "
        f"Python part (loop building the tuples, no SQL) {doc['apply_python_part_us']:.2f} µs"
    )
    report["objects"] = doc


# --- indexes --------------------------------------------------------------------------------------


def section_indexes(sc: Scenario, rounds: int = 3) -> None:
    out(
        f"## indexes of messages: {sc.n:,} inserts ({PAGE} per commit, ON CONFLICT DO NOTHING) "
        f"into a copy of the store of {sc.held:,} (WAL, synchronous=FULL)"
    )
    events = list(bl.message_events(sc.n, sc.held + 1, seed=1234))
    rows = [bl.message_row(ev) for ev in events]
    template = sc.tmp / "template.db"
    variants: dict[str, tuple[str, ...]] = {
        "real schema (3 secondary indexes)": (),
        **{f"without {name}": (name,) for name in INDEXES},
        "without all three": INDEXES,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    sizes: dict[str, int] = {}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            path = sc.tmp / "index-variant.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(template, path)
            conn = bl.raw_connection(path)
            for index in variants[name]:
                conn.execute(f"DROP INDEX {index}")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            t = time.perf_counter()
            bl.raw_insert(conn, rows, PAGE)
            times[name].append(time.perf_counter() - t)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
            sizes[name] = path.stat().st_size
    base = statistics.median(times["real schema (3 secondary indexes)"])
    doc = {}
    for name in variants:
        med = statistics.median(times[name])
        doc[name] = {
            "seconds": med,
            "rows_per_s": len(rows) / med,
            "vs_real": base / med,
            "file_bytes": sizes[name],
            "runs": times[name],
        }
        out(
            f"  {name:38s} {len(rows) / med:>9,.0f} rows/s  ({base / med:.2f}x the real "
            f"schema's rate; runs {', '.join(f'{x:.2f}' for x in times[name])} s)"
        )
    report["indexes"] = doc


# --- history --------------------------------------------------------------------------------------


def section_history(runs: int = 5) -> None:
    out(f"## history page: bench_history.py {runs} times, then what one call spends")
    ratios = []
    for _ in range(runs):
        run = _spawn([sys.executable, str(bl.HERE / "bench_history.py")], timeout=120)
        rec = None
        for line in run.out.splitlines():
            if line.startswith("BENCH "):
                rec = json.loads(line[6:])
        if rec is not None:
            ratios.append((rec["ratio"], rec["value"], rec["baseline"]))
    out(
        "  runs (ratio, engine p50 ms, raw p50 ms): "
        + "; ".join(f"{r:.2f} ({v:.3f} / {b:.3f})" for r, v, b in ratios)
    )
    doc: dict[str, Any] = {"runs": ratios}
    doc.update(asyncio.run(_history_parts()))
    out(
        "  one call, median of 2,000 (µs): "
        + ", ".join(f"{k} {v:.1f}" for k, v in doc.items() if k != "runs")
    )
    report["history"] = doc


async def _history_parts() -> dict[str, float]:
    """Each part in a loop of its own over the same random conversations (so that each meets
    the same cache state), median µs of a call."""
    import random

    from bench_history import RAW_SELECT

    from syncengine import SyncEngine
    from syncengine.store import store as store_mod

    with bl.workdir() as tmp:
        cids = bl.prefill_store(tmp / "store.db", 100_000)
        engine = SyncEngine(tmp / "store.db", connect=False)
        await engine.open()
        for cid in cids:
            engine.store.set_history_complete(cid)
        store = engine.store
        conn = bl.raw_connection(tmp / "store.db")
        sc = store._db.conn
        rows_sample = conn.execute(RAW_SELECT, (cids[0], 50)).fetchall()
        cols = store_mod._MESSAGE_COLUMNS
        page_sql = (
            f"SELECT {cols} FROM messages m LEFT JOIN message_patches p ON p.message_id = m.id "
            "WHERE m.conversation_id = ? AND m.seq IS NOT NULL ORDER BY m.seq DESC LIMIT ?"
        )
        echo_sql = (
            f"SELECT {cols} FROM messages m LEFT JOIN message_patches p ON p.message_id = m.id "
            "WHERE m.conversation_id = ? AND m.seq IS NULL ORDER BY m.local_id"
        )

        def empty_read(cid: str) -> None:
            with store._db.read():
                pass

        parts: dict[str, Any] = {
            "engine.messages": None,  # async, below
            "Store.page (1 read txn, 5 SELECTs)": lambda cid: store.page(cid, limit=50),
            "Store.messages (1 read txn, 2 SELECTs)": lambda cid: store.messages(cid, limit=50),
            "raw keyset SELECT (baseline)": lambda cid: conn.execute(
                RAW_SELECT, (cid, 50)
            ).fetchall(),
            "store conn: page SELECT alone": lambda cid: sc.execute(page_sql, (cid, 50)).fetchall(),
            "store conn: echoes SELECT alone": lambda cid: sc.execute(echo_sql, (cid,)).fetchall(),
            "store conn: MIN(seq) alone": lambda cid: sc.execute(
                "SELECT MIN(seq) FROM messages WHERE conversation_id = ?", (cid,)
            ).fetchone(),
            "store conn: conversation exists + eoh flag": lambda cid: (
                sc.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone(),
                sc.execute(
                    "SELECT 1 FROM meta WHERE key = ? AND value = '1'", (f"eoh:{cid}",)
                ).fetchone(),
            ),
            "empty read txn (RLock + BEGIN + COMMIT)": empty_read,
            "50 rows -> Message": lambda cid: [store_mod._message(r) for r in rows_sample],
        }
        result: dict[str, float] = {}
        for name, fn in parts.items():
            rng = random.Random(7)
            times = []
            for _ in range(2000):
                cid = rng.choice(cids)
                t = time.perf_counter()
                if fn is None:
                    await engine.messages(cid, limit=50)
                else:
                    fn(cid)
                times.append(time.perf_counter() - t)
            result[name] = statistics.median(times) * 1e6
        conn.close()
        await engine.close()
    return result


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (all)")
    parser.add_argument("--events", type=int, default=N)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sections = args.sections or list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    info = bl.machine()
    out(
        f"Machine: nproc {info['nproc']}, Python {info['python']}, SQLite {info['sqlite']}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    started = time.perf_counter()
    need_scenario = any(s != "history" for s in sections)
    with bl.workdir() as tmp:
        sc = Scenario(tmp, args.events, HELD) if need_scenario else None
        try:
            for name in sections:
                if name == "history":
                    section_history()
                else:
                    assert sc is not None
                    globals()[f"section_{name}"](sc)
        finally:
            if sc is not None:
                sc.close()
    report["machine"] = {**info, "loadavg": os.getloadavg()}
    out(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
