"""Issue 12, case 5: one writer per store, whatever the entry point (G6).

- A daemon syncs alice's store. An embedding app opens a syncing ``SyncEngine`` on the same
  store, sends through it and closes it. The app's engine must take the store's lock or defer
  to the daemon (either way its message reaches the server); the daemon's recorded state must
  not be overwritten (``status`` still says ``live``), and ``syncengine sync`` keeps working
  (it defers to the daemon and exits 0). Today the app's engine takes no lock, syncs beside the
  daemon, and on close writes ``offline`` into the store: ``status`` lies and ``sync`` exits 1.
- A second daemon started through a symlink to the store must be refused (exit 75, naming the
  first daemon) because the lock is keyed by the store's real path. Today the lock file is
  named after the path given, so the second daemon runs beside the first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from syncengine import StoreLockHeld, SyncEngine
from syncengine.daemon import EX_TEMPFAIL
from tests.conftest import FAST
from tests.scenarios.conftest import (
    SCN_CONVERGE_S,
    ScnClient,
    ScnDaemon,
    scn_cli,
    scn_cli_login,
    scn_status,
    scn_until,
    scn_wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(90)
async def test_embedding_engine_beside_a_daemon_defers_to_it(
    tmp_path: Path, server: Any, scn_daemons: Any
) -> None:
    db = tmp_path / "alice.db"
    await scn_cli_login(db, server.url, "alice")
    async with ScnClient(server.url, "bob") as bob:
        cid = await bob.create("One writer", ["alice"])
        daemon: ScnDaemon = await scn_daemons(db)
        await daemon.wait_live()
        await scn_until(
            _has_conversation(db), SCN_CONVERGE_S, "the daemon pulled bob's conversation"
        )

        app = SyncEngine(db, **FAST)
        refused = False
        try:
            await app.open()
        except StoreLockHeld:
            refused = True  # it took no part: nothing to send through it
        if not refused:
            try:
                sent = await app.send(cid, "from the embedding app")
                await scn_until(
                    lambda: any(
                        m["op_id"] == sent.op_id for m in server.state.all_messages(cid)
                    ),
                    SCN_CONVERGE_S,
                    "the app's message reaches the server (pushed by the daemon or the app)",
                )
            finally:
                await app.close()

        status = await scn_status(db)
        assert status["daemon"] == {"running": True, "pid": daemon.pid}
        assert status["state"] == "live", f"the daemon's state was overwritten: {status}"
        code, out, err = await scn_cli(db, "--json", "sync", "--timeout", "20")
        assert code == 0, f"'syncengine sync' beside the live daemon: exit {code}: {err.strip()}"
        assert json.loads(out)["daemon"] is True
        assert not daemon.exited, daemon.lines[-5:]


def _has_conversation(db: Path) -> Any:
    async def check() -> bool:
        return (await scn_status(db))["conversations"] >= 1

    return check


@pytest.mark.timeout(60)
async def test_second_daemon_through_a_symlink_is_refused(
    tmp_path: Path, server: Any, scn_daemons: Any
) -> None:
    db = tmp_path / "alice.db"
    await scn_cli_login(db, server.url, "alice")
    first: ScnDaemon = await scn_daemons(db)
    await first.wait_live()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "same-store.db"
    os.symlink(db, link)
    os.symlink(f"{db}.token", f"{link}.token")  # the same account's token, through the link

    second: ScnDaemon = await scn_daemons(link)
    # It either exits at once, or starts syncing beside the first (then it never will).
    await scn_until(
        lambda: second.exited or second.started,
        SCN_CONVERGE_S,
        "the second daemon decides",
        lambda: second.lines[-3:],
    )
    assert await scn_wait(lambda: second.exited, 2.0), (
        f"a second daemon (pid {second.pid}) syncs the store beside pid {first.pid} "
        f"through {link.name}: {[line for line in second.lines if 'started' in line]}"
    )
    assert second.proc is not None and second.proc.returncode == EX_TEMPFAIL, second.lines[-3:]
    assert any(str(first.pid) in line for line in second.lines), second.lines[-3:]
    assert not first.exited
    assert (await scn_status(db))["state"] == "live"
