"""kill -9 of a syncing app process, again and again, while it keeps sending (G1, G2, G3).

A child process (``tests/data/contract/child_engine.py``) runs a SyncEngine on its own store:
it prints ``ATTEMPT`` before each ``send`` and ``ACK`` once the send returned. The parent
kills it with SIGKILL at a random moment (mid-commit, mid-push, mid-pull) 10 times, and after
each kill checks ``PRAGMA integrity_check`` and that the rows the kill left SENDING are
recovered (not stuck) once the next child starts. Oracle at the end: lost 0 (every ACK is on
the server), duplicated 0, and both the child's store and a live member's store converge.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from syncengine import SyncEngine
from syncengine.models import OutboxState
from syncengine.store import Store
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR, Oracle, eventually, scale

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = Path(__file__).resolve().parents[1] / "data" / "contract" / "child_engine.py"
REPO = Path(__file__).resolve().parents[2]


class Child:
    """One run of the child app, its output parsed into the oracle as it arrives."""

    def __init__(self, oracle: Oracle, cid: str, sender: str) -> None:
        self.oracle = oracle
        self.cid = cid
        self.sender = sender
        self.proc: asyncio.subprocess.Process | None = None
        self.acks = 0
        self.attempted = 0
        self.lines: list[str] = []
        self.done = False
        self._reader: asyncio.Task[None] | None = None

    async def start(self, db: Path, start: int, end: int, *, finish: bool = False) -> None:
        args = [str(CHILD), str(db), self.cid, str(start), str(end), json.dumps(FAST)]
        if finish:
            args.append("--finish")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode().strip()
            self.lines.append(text)
            parts = text.split()
            if parts[0] == "ATTEMPT":
                self.oracle.attempt(self.cid, self.sender, f"k{parts[1]}", op_id=parts[2])
                self.attempted = int(parts[1]) + 1
            elif parts[0] == "ACK":
                self.oracle.returned(parts[2])
                self.acks += 1
            elif parts[0] == "DONE":
                self.done = True

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert self._reader is not None
        await self._reader

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None and self._reader is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code


def sending_rows(db: Path) -> set[str]:
    with Store(db) as store:
        return {i.op_id for i in store.outbox(OutboxState.SENDING, limit=100_000)}


@pytest.mark.timeout(900 if scale(1) > 1 else 240)
async def test_kill9_while_sending(
    tmp_path: Path, server: Any, make_engine: Any, seed: int
) -> None:
    rng = random.Random(seed)
    oracle = Oracle("kill-9", seed)
    n_messages, n_kills = scale(300), scale(10)
    db = tmp_path / "alice-app.db"
    async with SyncEngine(db, **FAST) as setup:
        await setup.login(server.url, "alice", "alice-password")
        cid = (await setup.create_conversation("Crashy", members=["bob"])).id
        assert await setup.wait_for_pending(10 * TIME_FACTOR)
    bob = await make_engine("bob")
    await eventually(lambda: bob.store.has_conversation(cid), what="bob sees the chat")

    child = Child(oracle, cid, "alice")
    next_i = 0
    kills: list[dict[str, Any]] = []
    per_run = n_messages // (n_kills + 1)
    try:
        for k in range(n_kills):
            await child.start(db, next_i, n_messages)
            if k > 0 and kills[-1]["sending"]:
                # The rows the last kill left SENDING are recovered by this run, not stuck.
                stuck = kills[-1]["sending"]
                await eventually(
                    lambda s=stuck: not (sending_rows(db) & s),
                    timeout=15,
                    what=f"{len(stuck)} rows left SENDING by kill -9 recovered after restart",
                )
            # a random point of the run (3/4 of a share on average: every kill happens)
            target = child.acks + rng.randrange(per_run // 2, per_run)
            await eventually(
                lambda t=target: child.acks >= t or child.attempted >= n_messages,
                timeout=30,
                what="the child acknowledges sends",
            )
            await asyncio.sleep(rng.uniform(0, 0.05))
            await child.kill()
            oracle.fault("kill -9")
            next_i = child.attempted  # the op in flight is abandoned, as a crashed app would
            with Store(db) as store:
                assert store.integrity_check() == "ok", f"integrity_check failed after kill {k}"
                health = store.health()
            kills.append({"at": next_i, "sending": sending_rows(db), "pending": health.pending})
    finally:
        if child.proc is not None and child.proc.returncode is None:
            await child.kill()
    oracle.healed()
    await child.start(db, next_i, n_messages, finish=True)
    try:
        code = await child.wait(120 * TIME_FACTOR)
    finally:
        if child.proc is not None and child.proc.returncode is None:
            await child.kill()
    assert code == 0 and child.done, f"the last child failed: {child.lines[-5:]}"
    with Store(db) as store:
        assert store.integrity_check() == "ok"
        health = store.health()
        assert health.sending == 0 and health.pending == 0, health

        fig = await oracle.converge(
            lambda: {cid: server.state.all_messages(cid)},
            {"alice-app": (store, [cid]), "bob": (bob.store, [cid])},
            timeout=30 * TIME_FACTOR,
        )
    fig.extra["caught_sending"] = sum(len(k["sending"]) for k in kills)
    fig.extra["kills"] = len(kills)
    oracle.assert_ok(fig)
    assert len(kills) == n_kills
    assert fig.acknowledged >= n_messages - n_kills  # at most one op abandoned per kill
