"""Issue 12, case 3: the server's data directory is restored from a backup.

alice (writing) and bob (reading) are engines in sync with the server. The server is stopped
and its data directory copied (the backup); it starts again, alice sends more, both stores
see it. The server is stopped again, its data directory put back from the backup, and started
on the same port: it has forgotten alice's last messages, and the next ones reuse their
sequence numbers. alice sends again.

Required: both stores end equal to the server (whatever the server holds after the restore,
including any message a sender offers again), nothing stays pending or sending, no engine
FAILED, and the daemon, used as the writer, keeps running. Today the writer's store refuses
the reused sequence numbers (``UNIQUE constraint failed``), its new sends stay pending
although the server has them, the daemon exits 1, and the reader stays live still showing the
messages the server forgot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from syncengine import ConnectionState, ConnectionStateChanged, SyncEngine
from syncengine.server.testing import run_server
from tests.scenarios.conftest import (
    SCN_CONVERGE_S,
    ScnClient,
    ScnDaemon,
    ScnEngineFactory,
    scn_cli,
    scn_cli_login,
    scn_diff,
    scn_server_view,
    scn_store_view,
    scn_until,
    scn_wait,
)

pytestmark = [pytest.mark.integration]


async def backup(srv: Any, to: Path) -> None:
    """Stop the server, copy its data directory, start it again (same port)."""
    await srv.stop()
    shutil.copytree(srv.config.data_dir, to)
    await srv.start()


async def restore(srv: Any, backup_dir: Path) -> None:
    """Stop the server, put the backup back in place of its data directory, start it."""
    await srv.stop()
    shutil.rmtree(srv.config.data_dir)
    shutil.copytree(backup_dir, srv.config.data_dir)
    await srv.start()


def failed_states(engine: SyncEngine) -> list[str]:
    seen: list[str] = []
    engine.on(
        ConnectionStateChanged,
        lambda ev: seen.append(ev.reason) if ev.new is ConnectionState.FAILED else None,
    )
    return seen


@pytest.mark.timeout(90)
async def test_writer_and_reader_equal_a_restored_server(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    async with run_server(tmp_path / "srv") as srv:
        alice = await scn_engines(srv.url, "alice")
        bob = await scn_engines(srv.url, "bob")
        alice_failed, bob_failed = failed_states(alice), failed_states(bob)
        cid = (await alice.create_conversation("Restore", members=["bob"])).id
        for i in range(5):
            await alice.send(cid, f"before the backup {i}")
        assert await alice.wait_for_pending(SCN_CONVERGE_S)
        await scn_until(lambda: bob.store.message_count(cid) == 5, SCN_CONVERGE_S, "bob has 5")

        await backup(srv, tmp_path / "backup")
        for i in range(5):
            await alice.send(cid, f"after the backup {i}")
        assert await alice.wait_for_pending(SCN_CONVERGE_S)
        await scn_until(lambda: bob.store.message_count(cid) == 10, SCN_CONVERGE_S, "bob has 10")

        await restore(srv, tmp_path / "backup")  # the server forgets "after the backup"
        for i in range(3):
            await alice.send(cid, f"after the restore {i}")

        def converged() -> bool:
            # A FAILED engine never recovers by itself: fail at once, not at the deadline.
            assert not alice_failed and not bob_failed, f"an engine FAILED; {detail()}"
            truth = scn_server_view(srv.state.all_messages(cid))
            h = alice.store.health()
            return (
                scn_store_view(alice, cid) == truth
                and scn_store_view(bob, cid) == truth
                and h.pending == 0
                and h.sending == 0
            )

        def detail() -> str:
            truth = scn_server_view(srv.state.all_messages(cid))
            h = alice.store.health()
            return (
                f"alice: {scn_diff(scn_store_view(alice, cid), truth)}; "
                f"bob: {scn_diff(scn_store_view(bob, cid), truth)}; alice pending {h.pending} "
                f"sending {h.sending}; states alice {alice.state.value} bob {bob.state.value}; "
                f"FAILED alice {alice_failed[:1]} bob {bob_failed[:1]}"
            )

        await scn_until(converged, SCN_CONVERGE_S, "both stores equal the restored server", detail)
        assert not alice_failed and not bob_failed, (alice_failed, bob_failed)
        # The stores may equal the server while an engine still finishes its resync
        # (SYNCING): both must reach LIVE, not be there at that very instant.
        assert await alice.wait_for_state(ConnectionState.LIVE, SCN_CONVERGE_S)
        assert await bob.wait_for_state(ConnectionState.LIVE, SCN_CONVERGE_S)
        assert not alice_failed and not bob_failed, (alice_failed, bob_failed)
        bodies = [row[3] for row in scn_server_view(srv.state.all_messages(cid))]
        assert [b for b in bodies if b.startswith("after the restore")] == [
            f"after the restore {i}" for i in range(3)
        ]


@pytest.mark.timeout(60)
async def test_reader_equals_a_restored_server(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    async with run_server(tmp_path / "srv") as srv, ScnClient(srv.url, "alice") as alice:
        cid = await alice.create("Reader", ["bob"])
        bob = await scn_engines(srv.url, "bob")
        bob_failed = failed_states(bob)
        for i in range(3):
            await alice.send(cid, f"before the backup {i}")
        await scn_until(lambda: bob.store.message_count(cid) == 3, SCN_CONVERGE_S, "bob has 3")

        await backup(srv, tmp_path / "backup")
        await alice.send_many(cid, [f"after the backup {i}" for i in range(3)])
        await scn_until(lambda: bob.store.message_count(cid) == 6, SCN_CONVERGE_S, "bob has 6")

        await restore(srv, tmp_path / "backup")
        await alice.login()  # the restored server may not know this device's newest token
        await alice.send_many(cid, [f"after the restore {i}" for i in range(2)])

        def converged() -> bool:
            assert not bob_failed, f"bob FAILED: {bob_failed[:1]}"
            truth = scn_server_view(srv.state.all_messages(cid))
            return scn_store_view(bob, cid) == truth and bob.state is ConnectionState.LIVE

        await scn_until(
            converged,
            SCN_CONVERGE_S,
            "the reader's store equals the restored server",
            lambda: f"bob ({bob.state.value}): "
            f"{scn_diff(scn_store_view(bob, cid), scn_server_view(srv.state.all_messages(cid)))}",
        )


@pytest.mark.timeout(90)
async def test_daemon_writer_keeps_running_after_a_restore(
    tmp_path: Path, scn_daemons: Any
) -> None:
    db = tmp_path / "alice-daemon.db"
    async with run_server(tmp_path / "srv") as srv:
        await scn_cli_login(db, srv.url, "alice")
        async with ScnClient(srv.url, "bob") as bob:
            cid = await bob.create("Daemon restore", ["alice"])
            await bob.send(cid, "hello alice")
            daemon: ScnDaemon = await scn_daemons(db)
            await daemon.wait_live()

            await backup(srv, tmp_path / "backup")
            for i in range(3):
                code, _out, err = await scn_cli(db, "send", cid, f"after the backup {i}")
                assert code == 0, err
            await scn_until(
                lambda: len(srv.state.all_messages(cid)) == 4, SCN_CONVERGE_S, "4 on the server"
            )

            await restore(srv, tmp_path / "backup")
            await bob.send(cid, "bob after the restore")
            for i in range(2):
                code, _out, err = await scn_cli(db, "send", cid, f"after the restore {i}")
                assert code == 0, err

            def assert_running() -> None:
                assert not daemon.exited, (
                    f"the daemon exited {daemon.proc.returncode if daemon.proc else None}: "
                    f"{[line for line in daemon.lines if 'error' in line.lower()][-2:]}"
                )

            async def store_equals_server() -> bool:
                assert_running()  # fail at once, not at the deadline
                code, out, _err = await scn_cli(db, "--json", "messages", cid, "--limit", "100")
                if code != 0:
                    return False
                mine = [(m["seq"], m["sender"], m["body"]) for m in json.loads(out)]
                truth = [
                    (m["seq"], m["sender"], m["body"]) for m in srv.state.all_messages(cid)
                ]
                return mine == truth

            converged = await scn_wait(store_equals_server, SCN_CONVERGE_S, interval=0.5)
            _code, status_out, _err = await scn_cli(db, "--json", "status")
            assert_running()
            assert converged, f"the store never equalled the server; status {status_out}"
