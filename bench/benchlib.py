"""Shared helpers of the benchmarks: arguments, reporting, temp dirs, helper processes, data.

Every benchmark script measures the engine *and* its raw baseline in the same run, prints
both and their ratio, and one machine-readable line::

    BENCH {"name": "catch_up", "value": ..., "baseline": ..., "ratio": ..., ...}

Helper processes (the reference server, a bare WebSocket feeder) run as children of the
benchmark: ``python bench/benchlib.py serve|feed ...``. They print one ``URL ...`` line when
ready and exit when their standard input closes, so nothing outlives a benchmark, even one
that is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a clone without install: still importable
    sys.path.insert(0, str(HERE.parent))

from syncengine.models import new_id  # noqa: E402

#: Keys every BENCH line carries (the smoke test checks them).
REQUIRED_KEYS = (
    "name",
    "figure",
    "unit",
    "value",
    "baseline",
    "ratio",
    "target",
    "met",
    "smoke",
    "seconds",
)

#: Server settings for benchmarks: loopback, cheap password hashing, and rate limits out of
#: the way (the benchmarks measure throughput, not the limiter).
SERVER_OVERRIDES: dict[str, Any] = {
    "rate_per_s": 1e9,
    "rate_burst": 1_000_000_000,
    "pull_rate_per_s": 1e9,
    "pull_burst": 1_000_000_000,
    "login_rate_per_s": 1e9,
    "login_burst": 1_000_000_000,
    "ws_send_queue": 1_000_000,
    "ws_ping_interval_s": None,
    # thousands of clients from 127.0.0.1: no cap per address (the descriptor limit holds)
    "max_connections_per_ip": None,
}

#: Engine settings for live benchmarks: quick reconnects, as in the test suite.
FAST: dict[str, Any] = {
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.5,
    "heartbeat_interval_s": 2.0,
    "heartbeat_timeout_s": 5.0,
    "poll_interval_s": 0.3,
    "safety_pull_s": 30.0,
}


# --- arguments and reporting ------------------------------------------------------------------


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The common command line: ``--smoke`` (tiny sizes, for CI) and ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (~1%%): checks the script still runs"
    )
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


def sized(full: int, smoke: bool, *, minimum: int = 1, fraction: float = 0.01) -> int:
    """``full`` in a full run, about ``fraction`` of it (at least ``minimum``) in smoke mode."""
    return max(minimum, int(full * fraction)) if smoke else full


def emit(
    name: str,
    figure: str,
    *,
    unit: str,
    value: float,
    baseline: float | None,
    ratio: float | None,
    target: str,
    met: bool | None,
    smoke: bool,
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """Print the human summary and the ``BENCH {json}`` line; return the record."""
    record: dict[str, Any] = {
        "name": name,
        "figure": figure,
        "unit": unit,
        "value": _round(value),
        "baseline": _round(baseline),
        "ratio": _round(ratio),
        "target": target,
        "met": met,
        "smoke": smoke,
        "seconds": round(seconds, 2),
        **{k: _round(v) for k, v in extra.items()},
    }
    print(f"== {figure}")
    print(f"   engine:   {_fmt(value)} {unit}")
    if baseline is not None:
        print(f"   baseline: {_fmt(baseline)} {unit}")
    if ratio is not None:
        print(f"   ratio:    {ratio:.2f}")
    verdict = "n/a" if met is None else ("met" if met else "NOT met")
    print(f"   target:   {target} -> {verdict}{' (smoke sizes)' if smoke else ''}")
    for key, val in record.items():
        if key in extra and key != "more":
            print(f"   {key}: {_fmt(val) if isinstance(val, float) else val}")
    for row in record.get("more", []):  # further figures of the same run (run_all: own rows)
        print(f"== {row['figure']}")
        print(f"   engine:   {_fmt(row['value'])} {row['unit']}  baseline: {_fmt(row['baseline'])}")
        print(f"   ratio:    {row['ratio']:.2f}  target: {row['target']} -> {row['met']}")
    print("BENCH " + json.dumps(record, sort_keys=True), flush=True)
    return record


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4 if abs(value) < 10 else 1)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


# --- temp dirs, RSS -----------------------------------------------------------------------------


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary directory on the same file system as real stores; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-") as tmp:
        yield Path(tmp)


def rss_bytes() -> int:
    """The current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples RSS on a thread every ``interval`` seconds; ``peak`` is the largest seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.start = rss_bytes()
        self.peak = self.start
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = rss_bytes()
            self.samples.append(value)
            self.peak = max(self.peak, value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# --- helper processes ---------------------------------------------------------------------------


class Child:
    """A helper process (``benchlib.py serve|feed``): started, read for its URL, stopped."""

    def __init__(self, args: Sequence[str], *, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "benchlib.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        self.url = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("URL "):
                self.url = line.split()[1]
                break
        if not self.url:
            self.stop()
            raise RuntimeError(f"helper {args[0]} did not start")

    def stop(self) -> None:
        """Close its stdin (it exits), then make sure it is gone."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_process(data_dir: Path, **overrides: Any) -> Child:
    """The reference server in a child process on 127.0.0.1 (``.url`` is ``http://...``).

    ``overrides`` are :class:`ServerConfig` fields over :data:`SERVER_OVERRIDES` (e.g.
    ``**DEFAULT_LIMITS`` to run with the server's default request-rate limits).
    """
    args = ["serve", str(data_dir)]
    if overrides:
        args.append(json.dumps(overrides))
    return Child(args)


def default_limits() -> dict[str, Any]:
    """The reference server's default REST and pull rate limits (``ServerConfig``'s own)."""
    import attrs

    from syncengine.server.config import ServerConfig

    fields = attrs.fields(ServerConfig)
    return {
        "rate_per_s": fields.rate_per_s.default,
        "rate_burst": fields.rate_burst.default,
        "pull_rate_per_s": fields.pull_rate_per_s.default,
        "pull_burst": fields.pull_burst.default,
    }


def feeder_process(mode: str, n: int, *, head: int = 0, seed: int = 1) -> Child:
    """A bare websockets server that streams ``n`` pre-encoded frames (``.url`` is ``ws://``).

    Modes: ``message`` (``message_received`` events, pos ``head+1...``), ``ephemeral``
    (typing and presence, then one ``message_received`` sentinel at ``head+1``), ``echo``.
    """
    return Child(["feed", mode, str(n), str(head), str(seed)])


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def _serve_main(data_dir: str, overrides: str | None = None) -> None:
    from syncengine.server.testing import run_server

    settings = {**SERVER_OVERRIDES, **(json.loads(overrides) if overrides else {})}
    async with run_server(data_dir, **settings) as srv:
        print(f"URL {srv.url}", flush=True)
        await _stdin_closed()


async def _feed_main(mode: str, n: int, head: int, seed: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    if mode == "message":
        frames = [orjson.dumps(e).decode() for e in message_events(n, head + 1, seed=seed)]
    elif mode == "ephemeral":
        frames = [orjson.dumps(e).decode() for e in ephemeral_events(n, seed=seed)]
        frames += [orjson.dumps(e).decode() for e in message_events(1, head + 1, seed=seed)]
    else:
        frames = []

    async def handler(ws: ServerConnection) -> None:
        if mode == "echo":
            async for msg in ws:
                await ws.send(msg)
            return
        await ws.recv()  # auth
        await ws.send(orjson.dumps({"type": "ready", "user": "alice", "head": head}).decode())
        await ws.recv()  # "go" (the engine's presence frame, sent once it is caught up)
        for frame in frames:
            await ws.send(frame)
        with contextlib.suppress(Exception):
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"URL ws://127.0.0.1:{port}", flush=True)
        await _stdin_closed()


# --- data ----------------------------------------------------------------------------------------

BODY = "The quick brown fox jumps over the lazy dog #"  # ~50 bytes: a typical chat line
T0_MS = 1_764_000_000_000


def conversation_ids(n: int, seed: int = 1) -> list[str]:
    """``n`` time-ordered (UUIDv7 layout) conversation ids, the same for the same seed."""
    import random
    import uuid

    rng = random.Random(seed)
    out = []
    for i in range(n):
        ms = T0_MS + seed * 1_000_000 + i
        value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64)
        value |= (0b10 << 62) | rng.getrandbits(62)
        out.append(str(uuid.UUID(int=value)))
    return out


def message_events(
    n: int, first_pos: int, *, seed: int = 1, convs: int = 100, sender: str = "bob"
) -> Iterator[dict[str, Any]]:
    """``n`` ``message_received`` events as the server sends them: pos from ``first_pos``,
    dense seq per conversation from 1, time-ordered (UUIDv7) message and op ids."""
    cids = conversation_ids(convs, seed)
    seqs = [0] * convs
    for i in range(n):
        k = i % convs
        seqs[k] += 1
        ts = T0_MS + 10_000_000 + i
        yield {
            "type": "message_received",
            "pos": first_pos + i,
            "conversation_id": cids[k],
            "seq": seqs[k],
            "ts_ms": ts,
            "message_id": new_id(ts / 1000),
            "op_id": new_id(ts / 1000),
            "sender": sender,
            "body": f"{BODY}{i}",
        }


def ephemeral_events(n: int, *, seed: int = 1, users: int = 50) -> Iterator[dict[str, Any]]:
    """``n`` typing and presence events (half each) from ``users`` other users."""
    cids = conversation_ids(20, seed)
    for i in range(n):
        user = f"user{i % users}"
        ts = T0_MS + i
        if i % 2:
            yield {
                "type": "typing_started",
                "conversation_id": cids[i % len(cids)],
                "user": user,
                "ttl_ms": 8000,
                "ts_ms": ts,
            }
        else:
            yield {
                "type": "presence_changed",
                "user": user,
                "status": "online" if i % 4 else "away",
                "last_seen_ms": ts,
                "ts_ms": ts,
            }


def message_row(ev: dict[str, Any]) -> tuple[Any, ...]:
    """The store's ``messages`` row of a ``message_received`` event (for raw baselines)."""
    return (
        ev["conversation_id"],
        ev["seq"],
        ev["message_id"],
        ev["op_id"],
        ev["sender"],
        ev["body"],
        ev["ts_ms"] / 1000,
    )


RAW_INSERT = (
    "INSERT INTO messages(conversation_id, seq, id, op_id, sender, body, state, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, 'sent', ?) ON CONFLICT DO NOTHING"
)


def raw_connection(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with the store's settings (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def raw_insert(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], batch: int) -> None:
    """Raw ``executemany ... ON CONFLICT DO NOTHING``, one transaction per ``batch`` rows."""
    for start in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_INSERT, rows[start : start + batch])
        conn.execute("COMMIT")


def prefill_store(path: Path, n: int, *, user: str = "alice", cursor: int = 0) -> list[str]:
    """A store of ``n`` server messages (in 100 conversations of its own) for ``user``.

    Written with raw SQL in one transaction (fast); the schema is the engine's. Returns the
    conversation ids.
    """
    from syncengine.store import Store

    store = Store(path, user=user)
    store.set_meta(user=user)
    store.close()
    cids = conversation_ids(100, seed=999)
    conn = raw_connection(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO conversations(id, title, members, last_seq, created_at) "
        "VALUES (?, 'old', ?, ?, ?)",
        [(c, orjson.dumps([user, "carol"]).decode(), n // 100, T0_MS / 1000) for c in cids],
    )
    conn.executemany(
        "INSERT INTO members(conversation_id, user) VALUES (?, ?)",
        [(c, m) for c in cids for m in (user, "carol")],
    )
    events = message_events(n, 1, seed=999, sender="carol")
    conn.executemany(RAW_INSERT, (message_row(ev) for ev in events))
    conn.execute(
        "INSERT INTO cursors(stream, pos, updated_at) VALUES ('events', ?, 0) "
        "ON CONFLICT(stream) DO UPDATE SET pos = excluded.pos",
        (cursor,),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return cids


def copy_store(src: Path, dst: Path) -> None:
    """Copy a (checkpointed) store file."""
    import shutil

    shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)


def server_bulk_load(data_dir: Path, user: str, events: Iterable[dict[str, Any]]) -> None:
    """Write ``events`` straight into a reference server's log (no REST), with the
    conversations they belong to (members ``user`` and the senders, from pos 1).

    One pass over ``events``, so a generator streams: nothing is kept per event.
    """
    from syncengine.server.storage import Storage

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "server.sqlite3"
    Storage(path).close()  # the schema
    convs: dict[str, int] = {}
    members: set[tuple[str, str]] = set()

    def rows() -> Iterator[tuple[Any, ...]]:
        for e in events:
            cid = e["conversation_id"]
            if convs.get(cid, 0) < e["seq"]:
                convs[cid] = e["seq"]
            members.add((cid, e["sender"]))
            yield (e["pos"], cid, e["seq"], e["type"], e["ts_ms"], orjson.dumps(e).decode())

    conn = raw_connection(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO events (pos, conversation_id, seq, type, ts_ms, data) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows(),
    )
    members.update((cid, user) for cid in convs)
    conn.executemany(
        "INSERT INTO conversations (id, title, created_by, created_ms, created_pos, last_seq, "
        "origin) VALUES (?, 'bench', ?, ?, 1, ?, 'bulk')",
        [(cid, user, T0_MS, last) for cid, last in convs.items()],
    )
    conn.executemany("INSERT INTO members (conversation_id, user) VALUES (?, ?)", sorted(members))
    conn.executemany(
        "INSERT INTO spans (conversation_id, user, from_pos) VALUES (?, ?, 1)", sorted(members)
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def logged_in_engine(db: Path, url: str, user: str, **options: Any) -> Any:
    """An open :class:`SyncEngine` logged in to ``url`` (``connect=False`` unless told)."""
    from syncengine import SyncEngine

    settings: dict[str, Any] = {"connect": False, **options}
    engine = SyncEngine(db, **settings)
    await engine.open()
    await engine.login(url, user, f"{user}-password", device=settings.get("device") or "bench")
    return engine


# --- catch-up as users run it: whole processes ----------------------------------------------------

RAW_PULL = HERE / "rawpull.py"


def cli_command(db: Path, *args: str) -> list[str]:
    """``syncengine --db DB ARGS...`` as this interpreter runs it (``python -m syncengine.cli``)."""
    return [sys.executable, "-m", "syncengine.cli", "--db", str(db), *args]


def catchup_setup(tmp: Path, n: int, held: int, *, seed: int) -> int:
    """A server log of ``n`` new messages for alice (``tmp/server``, bulk-loaded, from pos
    ``held + 1``) and a template store ``tmp/template.db`` holding ``held`` messages with its
    cursor at ``held``: a user who was away while ``n`` messages arrived. Returns the head."""
    server_bulk_load(tmp / "server", "alice", message_events(n, held + 1, seed=seed))
    prefill_store(tmp / "template.db", held, cursor=held)
    return held + n


async def login_store(db: Path, url: str, user: str = "alice") -> None:
    """Log the store in to ``url`` (its token file beside it), then fold its WAL back."""
    engine = await logged_in_engine(db, url, user)
    await engine.close()
    conn = sqlite3.connect(str(db))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def copy_account(src: Path, dst: Path) -> Path:
    """Copy a logged-in (checkpointed) store and its token file; returns ``dst``."""
    import shutil

    copy_store(src, dst)
    shutil.copyfile(f"{src}.token", f"{dst}.token")
    os.chmod(f"{dst}.token", 0o600)
    return dst


def point_store_at(db: Path, url: str) -> None:
    """Record ``url`` as the store's server (another server process on the same data)."""
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'server'", (url,))
    finally:
        conn.close()


def store_position(db: Path) -> tuple[int, int]:
    """``(cursor, message count)`` of a store, read with a connection of its own."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT pos FROM cursors WHERE stream = 'events'").fetchone()
        count = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        conn.close()
    return (int(row[0]) if row else 0), int(count)


def _stop_pid(proc: subprocess.Popen[Any], sig: int | None = None, wait: float = 15.0) -> None:
    """Stop one child by its pid (``sig``, default SIGKILL) and reap it."""
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL if sig is None else sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class Run:
    """One finished process: wall seconds from spawn to exit, CPU seconds (user + system, all
    its threads), exit status, output."""

    __slots__ = ("cpu", "err", "out", "seconds", "status")

    def __init__(self, seconds: float, cpu: float, status: int, out: str, err: str) -> None:
        self.seconds, self.cpu, self.status, self.out, self.err = seconds, cpu, status, out, err


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a running process (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_process(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` to its end (killed by pid after ``timeout``: status -9). Its CPU time is
    the growth of this process's reaped-children usage, so run one at a time."""
    environ = {**os.environ, **(env or {})}
    cpu = _children_cpu()
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=environ
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_pid(proc)
        out, err = proc.communicate()
    seconds = time.perf_counter() - t
    return Run(
        seconds,
        _children_cpu() - cpu,
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


def run_raw_pull(
    url: str, db: Path, since: int, page: int, *, timeout: float = 60.0, mode: str = "FULL"
) -> tuple[Run, dict[str, Any]]:
    """The raw loop (``rawpull.py``) as a process: the run and its own JSON report. ``mode``:
    the store's ``synchronous`` (``FULL``, ``NORMAL``) or ``PULL`` (nothing written)."""
    run = run_process(
        [sys.executable, str(RAW_PULL), url, str(db), str(since), str(page), mode],
        timeout=timeout,
    )
    if run.status != 0:
        raise RuntimeError(f"rawpull.py exited {run.status}: {run.err.strip()[-2000:]}")
    return run, json.loads(run.out.strip().splitlines()[-1])


def run_daemon_until(
    db: Path, head: int, *, timeout: float = 60.0, poll_s: float = 0.005
) -> tuple[Run, str]:
    """Start ``syncengine daemon`` on ``db``; the seconds from spawn until its store's cursor
    reaches ``head`` (read from another connection every ``poll_s``) and its CPU time by then.
    Then SIGTERM (by pid). Returns the run (status: the daemon's exit status) and its log;
    raises when the head is not reached in time."""
    import signal

    log_path = Path(f"{db}.daemon.log")
    seconds = cpu = None
    with log_path.open("wb") as log:
        t = time.perf_counter()
        proc = subprocess.Popen(
            cli_command(db, "daemon"), stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                deadline = t + timeout
                while time.perf_counter() < deadline:
                    row = conn.execute("SELECT pos FROM cursors WHERE stream = 'events'").fetchone()
                    if row and row[0] >= head:
                        seconds = time.perf_counter() - t
                        cpu = proc_cpu(proc.pid)
                        break
                    if proc.poll() is not None:
                        break
                    time.sleep(poll_s)
            finally:
                conn.close()
        finally:
            _stop_pid(proc, signal.SIGTERM)
    text = log_path.read_text(errors="replace")
    if seconds is None or cpu is None:
        raise RuntimeError(
            f"the daemon did not reach head {head} (exit {proc.returncode}):\n" + text[-2000:]
        )
    return Run(seconds, cpu, proc.returncode, "", text), text


def run_daemon_for(db: Path, window: float) -> tuple[int, str]:
    """Run ``syncengine daemon`` on ``db`` for ``window`` seconds from spawn, then SIGTERM (by
    pid). Returns how far its cursor moved, and its log."""
    import signal

    start = store_position(db)[0]
    log_path = Path(f"{db}.daemon.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cli_command(db, "daemon"), stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(window)
        finally:
            _stop_pid(proc, signal.SIGTERM)
    return store_position(db)[0] - start, log_path.read_text(errors="replace")


def main(argv: Sequence[str]) -> None:
    """``benchlib.py serve DATA_DIR [OVERRIDES_JSON]`` or ``benchlib.py feed MODE N HEAD SEED``."""
    if argv[:1] == ["serve"]:
        asyncio.run(_serve_main(argv[1], argv[2] if len(argv) > 2 else None))
    elif argv[:1] == ["feed"]:
        asyncio.run(_feed_main(argv[1], int(argv[2]), int(argv[3]), int(argv[4])))
    else:
        raise SystemExit("usage: benchlib.py serve DATA_DIR [JSON] | feed MODE N HEAD SEED")


if __name__ == "__main__":
    main(sys.argv[1:])
