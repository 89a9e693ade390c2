"""The real ``syncengine daemon`` under faults, with the app writing beside it (G1, G2, G6).

The app enqueues through its own ``Store`` connection (as ``syncengine send`` does) while the
daemon, a subprocess, syncs the store against the reference server:

- two daemons on one store: the second exits 75 naming the first's pid; delivery is still
  exactly once;
- SIGTERM during a push burst: exit 0 with nothing left SENDING; a restart delivers the rest;
- kill -9 of the daemon during a burst, three times: the lock is released by the kernel, the
  next daemon starts, nothing stays SENDING, the oracle holds;
- a store locked by another process past the busy timeout: the daemon keeps running and
  resumes once the lock is gone;
- a corrupted store: exit 65, the file left untouched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from syncengine import SyncEngine
from syncengine.daemon import EX_DATAERR, EX_OK, EX_TEMPFAIL, daemon_info
from syncengine.models import ConnectionState, OpKind, OutboxState
from syncengine.store import Store
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR, Oracle, eventually, scale

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYNCENGINE = Path(sys.executable).with_name("syncengine")


class DaemonProcess:
    """``syncengine --db DB daemon`` as a subprocess, its log collected."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, *, wait_live: bool = True, log_level: str = "info") -> DaemonProcess:
        self.lines = []
        self.proc = await asyncio.create_subprocess_exec(
            str(SYNCENGINE),
            "--db",
            str(self.db),
            "daemon",
            "--log-level",
            log_level,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read())
        if wait_live:
            # The store's recorded state may be a killed daemon's stale "live": wait for this
            # daemon's own start-up line before trusting it.
            await eventually(
                lambda: self.exited or any("daemon started" in line for line in self.lines),
                timeout=20,
                what="the daemon starts",
            )
            await eventually(
                lambda: self.state() is ConnectionState.LIVE or self.exited,
                timeout=20,
                what="the daemon reaches LIVE",
            )
            assert not self.exited, self.lines[-10:]
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    def state(self) -> ConnectionState:
        with Store(self.db) as store:
            return store.health().state

    async def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout * TIME_FACTOR):
            code = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await self.wait()


@pytest.fixture
async def setup(tmp_path: Path, server: Any, make_engine: Any) -> AsyncIterator[Any]:
    """alice's store logged in with the CLI and a chat with bob (a live engine)."""
    db = tmp_path / "alice-daemon.db"
    proc = await asyncio.create_subprocess_exec(
        str(SYNCENGINE),
        "--db",
        str(db),
        "login",
        server.url,
        "alice",
        env={**os.environ, "SYNCENGINE_PASSWORD": "alice-password"},
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert await proc.wait() == 0
    async with SyncEngine(db, **FAST) as engine:
        cid = (await engine.create_conversation("Daemon", members=["bob"])).id
        assert await engine.wait_for_pending(10 * TIME_FACTOR)
    bob = await make_engine("bob")
    await eventually(lambda: bob.store.has_conversation(cid), what="bob sees the chat")
    daemons: list[DaemonProcess] = []

    def new_daemon() -> DaemonProcess:
        daemons.append(DaemonProcess(db))
        return daemons[-1]

    yield db, cid, bob, new_daemon
    for d in daemons:
        if d.proc is not None and not d.exited:
            d.proc.kill()
            await d.wait()


def enqueue(store: Store, oracle: Oracle, cid: str, body: str) -> None:
    """What ``syncengine send`` does: a durable enqueue (G1), recorded in the oracle."""
    op_id = oracle.attempt(cid, "alice", body)
    store.enqueue(OpKind.SEND, cid, {"body": body}, op_id=op_id)
    oracle.returned(op_id)


async def converge(oracle: Oracle, server: Any, db: Path, cid: str, bob: Any) -> None:
    with Store(db) as store:
        fig = await oracle.converge(
            lambda: {cid: server.state.all_messages(cid)},
            {"alice": (store, [cid]), "bob": (bob.store, [cid])},
            timeout=60 * TIME_FACTOR,
            until_acked=lambda: (h := store.health()).pending == 0 and h.sending == 0,
        )
    oracle.assert_ok(fig)


@pytest.mark.timeout(180)
async def test_two_daemons_on_one_store(setup: Any, server: Any, seed: int) -> None:
    db, cid, bob, new_daemon = setup
    oracle = Oracle("two daemons", seed)
    first = await new_daemon().start(log_level="debug")
    with Store(db) as store:
        for i in range(scale(50)):
            enqueue(store, oracle, cid, f"one writer {i}")
        second = await new_daemon().start(wait_live=False)
        assert await second.wait() == EX_TEMPFAIL
        oracle.fault("second daemon")
        assert any(str(first.pid) in line for line in second.lines), second.lines
        assert daemon_info(db) == (True, first.pid)
        for i in range(scale(50)):
            enqueue(store, oracle, cid, f"still one writer {i}")
    oracle.healed()
    await converge(oracle, server, db, cid, bob)
    assert not first.exited
    assert await first.signal(signal.SIGTERM) == EX_OK
    token = Path(f"{db}.token").read_text()
    assert token.strip() and not any(token.split('"')[3] in line for line in first.lines)


@pytest.mark.timeout(180)
async def test_sigterm_during_a_push_burst(setup: Any, server: Any, seed: int) -> None:
    db, cid, bob, new_daemon = setup
    oracle = Oracle("daemon SIGTERM mid-push", seed)
    burst = scale(300)
    daemon = await new_daemon().start()
    server.faults.delay_ms = 100  # slow pushes: the signal lands mid-request
    base = len(server.state.all_messages(cid))
    with Store(db) as store:
        for i in range(burst):
            enqueue(store, oracle, cid, f"burst {i}")
            if i % 25 == 24:
                await asyncio.sleep(0.05)  # the app sends over time; the daemon pushes
        await eventually(
            lambda: len(server.state.all_messages(cid)) > base, what="the burst is pushing"
        )
        assert await daemon.signal(signal.SIGTERM) == EX_OK
        oracle.fault("SIGTERM")
        pushed = len(server.state.all_messages(cid)) - base
        health = store.health()
        assert health.sending == 0, f"{health.sending} rows left SENDING after SIGTERM"
        oracle.extra["pushed_at_sigterm"] = f"{pushed}/{burst}"
        assert pushed < burst, "the burst was over before the signal"
        for i in range(scale(20)):  # the app keeps sending while the daemon is down
            enqueue(store, oracle, cid, f"while stopped {i}")
    server.faults.delay_ms = 0
    oracle.healed()
    restarted = await new_daemon().start()
    await converge(oracle, server, db, cid, bob)
    assert await restarted.signal(signal.SIGTERM) == EX_OK


@pytest.mark.timeout(240)
async def test_kill9_of_the_daemon_during_a_burst(setup: Any, server: Any, seed: int) -> None:
    db, cid, bob, new_daemon = setup
    oracle = Oracle("daemon kill -9 mid-push", seed)
    kills = 3
    server.faults.delay_ms = 50
    with Store(db) as store:
        for k in range(kills):
            daemon = await new_daemon().start()
            base = len(server.state.all_messages(cid))
            for i in range(scale(60)):
                enqueue(store, oracle, cid, f"run {k} msg {i}")
            await eventually(lambda b=base: len(server.state.all_messages(cid)) > b, what="pushing")
            assert await daemon.signal(signal.SIGKILL) == -signal.SIGKILL
            oracle.fault("daemon kill -9")
            assert store.integrity_check() == "ok"
            assert daemon_info(db)[0] is False, "the kernel did not release the lock"
            stuck = {i.op_id for i in store.outbox(OutboxState.SENDING, limit=10_000)}
            oracle.extra[f"sending_at_kill_{k}"] = len(stuck)
        server.faults.delay_ms = 0
        oracle.healed()
        final = await new_daemon().start()
        await eventually(
            lambda: not store.outbox(OutboxState.SENDING, limit=10_000),
            what="nothing stuck SENDING after restart",
        )
    await converge(oracle, server, db, cid, bob)
    assert await final.signal(signal.SIGTERM) == EX_OK


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.timeout(180)
async def test_daemon_survives_a_store_locked_past_the_busy_timeout(
    setup: Any, server: Any, seed: int
) -> None:
    db, cid, bob, new_daemon = setup
    oracle = Oracle("daemon store locked", seed)
    daemon = await new_daemon().start()
    hold = 30.0 if scale(1) > 1 else 6.5  # past the daemon's 5 s busy timeout
    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(db), str(hold), stdout=asyncio.subprocess.PIPE
    )
    assert locker.stdout is not None
    assert (await locker.stdout.readline()).strip() == b"LOCKED"
    oracle.fault(f"store locked {hold:.0f} s")
    for i in range(10):  # bob talks: the daemon cannot store it while the lock is held
        await oracle.send(bob, cid, f"during the lock {i}")
    async with asyncio.timeout(hold + 30):
        await locker.wait()
    assert not daemon.exited, daemon.lines[-10:]
    oracle.healed()
    with Store(db) as store:
        enqueue(store, oracle, cid, "after the lock")
    await converge(oracle, server, db, cid, bob)
    assert await daemon.signal(signal.SIGTERM) == EX_OK


async def test_corrupt_store_exits_65_and_is_left_untouched(setup: Any) -> None:
    db, _cid, _bob, new_daemon = setup
    data = bytearray(db.read_bytes())
    data[:100] = b"garbage " * 12 + b"garb"
    db.write_bytes(bytes(data))
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    daemon = await new_daemon().start(wait_live=False)
    assert await daemon.wait() == EX_DATAERR, daemon.lines[-5:]
    assert db.exists() and hashlib.sha256(db.read_bytes()).hexdigest() == digest
