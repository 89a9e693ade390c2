"""G1 under kill -9: every operation whose ``enqueue`` returned survives the death of the
process, with its local echo, and the file stays sound.

A child process enqueues sends in a loop and prints each op id right after ``enqueue``
returns; the parent kills it with SIGKILL at a random moment (sometimes while it is still
opening the store, mostly in the middle of the loop), many times over the same file."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from syncengine.store import Store
from tests.helpers_store import ME, PYTHON, conv_updated, subprocess_env

CHILD = """
import sys
from syncengine.store import Store

store = Store(sys.argv[1], user="me")
round_ = sys.argv[2]
i = 0
while True:
    op_id = f"r{round_}-{i}"
    kind = "mark_read" if i % 7 == 6 else "send"
    payload = {"seq": i} if kind == "mark_read" else {"body": f"message {op_id}"}
    store.enqueue(kind, "crash", payload, op_id=op_id)
    sys.stdout.write(op_id + "\\n")
    sys.stdout.flush()
    i += 1
"""

ROUNDS = 15


@pytest.mark.slow
def test_acknowledged_enqueues_survive_kill_9(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "crash.db"
    with Store(path, user=ME) as store:
        store.apply_events([conv_updated("crash", 1, 1)])
    acked: list[str] = []
    started = time.monotonic()
    for round_ in range(ROUNDS):
        proc = subprocess.Popen(
            [PYTHON, "-c", CHILD, str(path), str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
            bufsize=0,  # unbuffered: readline() must not swallow lines communicate() needs
        )
        assert proc.stdout is not None
        if rng.random() < 0.8:
            first = proc.stdout.readline()  # the loop is running: kill it mid-stream
            assert first.endswith(b"\n"), proc.stderr.read() if proc.stderr else b""
            acked.append(first.decode().strip())
            time.sleep(rng.uniform(0, 0.25))
        else:
            time.sleep(rng.uniform(0, 0.4))  # anywhere, start-up and opening included
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()  # it died of the kill only
        # a line is an acknowledgement only once complete (the write may be cut short)
        acked += [line.decode() for line in out.splitlines(keepends=True) if line.endswith(b"\n")]
        acked = [a.strip() for a in acked]
    elapsed = time.monotonic() - started

    with Store(path, user=ME) as store:
        assert store.integrity_check() == "ok"
        items = {i.op_id: i for i in store.outbox(limit=1_000_000)}
        lost = [op for op in acked if op not in items]
        echoes: dict[str, int] = {}
        for m in store.messages("crash", limit=1_000_000):
            echoes[m.op_id] = echoes.get(m.op_id, 0) + 1  # type: ignore[index]
        sends = {op for op, i in items.items() if i.kind.value == "send"}
        recovered = sorted(set(items) - set(acked))
        print(
            f"seed={seed} rounds={ROUNDS} acknowledged={len(acked)} stored={len(items)} "
            f"lost={len(lost)} recovered={len(recovered)} in {elapsed:.1f}s"
        )
        assert lost == []
        assert len(acked) > ROUNDS  # the kills did land mid-loop, not only at start-up
        # each send has exactly one echo, and no echo exists without its outbox row
        assert set(echoes) == sends and set(echoes.values()) == {1}
        # an op printed but not acknowledged (killed between commit and print) is allowed
        assert len(recovered) <= ROUNDS
