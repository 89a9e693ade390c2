"""The daemon: one per store (G6), signals, readiness, recovery, housekeeping jobs.

Most tests run ``syncengine daemon`` as a real subprocess against a reference server on
127.0.0.1, as systemd would run it; the job tests run :class:`Daemon` in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine.daemon import (
    EX_DATAERR,
    EX_TEMPFAIL,
    Daemon,
    DaemonConfig,
    StoreLock,
    daemon_info,
    notify,
    pid_path,
)
from syncengine.engine import SyncEngine
from syncengine.errors import StoreLockHeld
from syncengine.models import ConnectionState, OutboxState
from syncengine.paths import token_path
from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread, run_server
from syncengine.store import Store
from tests.test_cli import invoke, login, new_conversation, one_json, run_cli, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("server"), **TEST_DEFAULTS)
    with ServerThread(config) as server:
        yield server


class Notifications:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        # A short folder: unix socket paths are limited to about 100 bytes.
        self._dir = tempfile.mkdtemp(prefix="sd-")
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def expect(self, needle: str, timeout: float = 10.0) -> str:
        """Receive datagrams until one contains ``needle``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} notification within {timeout} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if needle in data:
                return data

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    n = Notifications()
    yield n
    n.close()


def start_daemon(
    db: Path, notifications: Notifications | None = None, *args: str
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCENGINE_DB", "NOTIFY_SOCKET")}
    if notifications is not None:
        env["NOTIFY_SOCKET"] = notifications.path
    return subprocess.Popen(
        [sys.executable, "-m", "syncengine.cli", "--db", str(db), "daemon", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@contextlib.contextmanager
def daemon_process(
    db: Path, notifications: Notifications | None = None, *args: str
) -> Iterator[subprocess.Popen[str]]:
    proc = start_daemon(db, notifications, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, float, str]:
    """Signal the daemon; returns (exit status, seconds to exit, stderr)."""
    started = time.monotonic()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=10)
    return proc.returncode, time.monotonic() - started, err


def state_of(db: Path) -> str:
    return str(one_json(invoke("--db", str(db), "--json", "status"))["state"])


def outbox_state(db: Path, op_id: str) -> OutboxState | None:
    with Store(db) as store:
        item = store.outbox_item(op_id)
    return item.state if item is not None else None


# --- the lifecycle, as systemd would drive it ------------------------------------------------


def test_daemon_lifecycle(tmp_path: Path, srv: ServerThread, notifications: Notifications) -> None:
    alice, bob = tmp_path / "alice.db", tmp_path / "bob.db"
    login(alice, srv.url, "d-alice")
    login(bob, srv.url, "d-bob")
    cid = new_conversation(alice, "d-bob")
    one_json(invoke("--db", str(alice), "--json", "sync"))
    one_json(invoke("--db", str(bob), "--json", "sync"))
    token = json.loads(token_path(alice).read_text())["token"]

    with daemon_process(alice, notifications) as proc:
        ready = notifications.expect("READY=1")
        assert f"MAINPID={proc.pid}" in ready
        wait_for(lambda: state_of(alice) == "live", 10, "the daemon to be live")
        status = one_json(invoke("--db", str(alice), "--json", "status"))
        assert status["daemon"] == {"running": True, "pid": proc.pid}

        # G6: a second daemon on the same store is refused at once, naming the holder.
        started = time.monotonic()
        second = run_cli("--db", str(alice), "daemon", timeout=15)
        assert second.returncode == EX_TEMPFAIL
        assert time.monotonic() - started < 5
        assert f"pid {proc.pid}" in second.stderr
        assert "Traceback" not in second.stderr

        # A message sent by another engine reaches the daemon's store over the live channel.
        one_json(invoke("--db", str(bob), "--json", "send", cid, "from bob", "--wait"))
        wait_for(
            lambda: any(
                m["body"] == "from bob"
                for m in one_json(invoke("--db", str(alice), "--json", "messages", cid))
            ),
            5,
            "bob's message in alice's store",
        )

        # An operation queued by the CLI is pushed by the daemon within about a second.
        queued_at = time.monotonic()
        op_id = one_json(invoke("--db", str(alice), "--json", "send", cid, "from cli"))["op_id"]
        wait_for(lambda: outbox_state(alice, op_id) is OutboxState.SENT, 2.0, "the push")
        print(f"CLI send pushed by the daemon in {time.monotonic() - queued_at:.2f} s")
        assert "from cli" in [m["body"] for m in srv.state.all_messages(cid)]

        # Every read works while the daemon writes; send --wait and sync defer to it.
        for command in ("status", "conversations", "outbox"):
            one_json(invoke("--db", str(alice), "--json", command))
        assert one_json(invoke("--db", str(alice), "--json", "sync"))["daemon"] is True
        waited = one_json(invoke("--db", str(alice), "--json", "send", cid, "waited", "--wait"))
        assert outbox_state(alice, waited["op_id"]) is OutboxState.SENT

        # tail reads the store the daemon writes.
        tail = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "syncengine.cli",
                "--db",
                str(alice),
                "--json",
                "tail",
                "--count",
                "1",
                "--timeout",
                "15",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # tail says on stderr once it has noted what the store holds: from then on every
            # message stored is printed (no fixed sleep a loaded machine could miss).
            assert tail.stderr is not None
            notice = tail.stderr.readline()
            assert "syncs this store: showing new messages only" in notice, notice
            one_json(invoke("--db", str(bob), "--json", "send", cid, "for tail", "--wait"))
            out, err = tail.communicate(timeout=20)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.communicate()
        assert tail.returncode == 0, err
        (line,) = out.splitlines()
        assert json.loads(line)["body"] == "for tail"

        # SIGTERM in the middle of a push: stops within 5 s, nothing left SENDING.
        srv.faults.delay_ms = 1500
        try:
            op_id = one_json(invoke("--db", str(alice), "--json", "send", cid, "cut"))["op_id"]
            wait_for(lambda: outbox_state(alice, op_id) is OutboxState.SENDING, 3, "the claim")
            code, took, err = stop(proc)
        finally:
            srv.faults.delay_ms = 0
        assert code == 0, err
        assert took < 5
        notifications.expect("STOPPING=1")

    with Store(alice) as store:
        assert store.health().sending == 0
        assert outbox_state(alice, op_id) is OutboxState.PENDING
    status = one_json(invoke("--db", str(alice), "--json", "status"))
    assert status["daemon"] == {"running": False, "pid": None}
    assert status["state"] == "offline"
    # Logs: JSON lines (stderr is not a terminal) and never the token.
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines)
    assert token not in err


def test_kill_9_leaves_no_stale_lock(
    tmp_path: Path, srv: ServerThread, notifications: Notifications
) -> None:
    db = tmp_path / "a.db"
    login(db, srv.url, "k-alice")
    cid = new_conversation(db, "k-bob")
    with daemon_process(db, notifications) as first:
        notifications.expect("READY=1")
        wait_for(lambda: state_of(db) == "live", 10, "the daemon to be live")
        wait_for(
            lambda: not one_json(invoke("--db", str(db), "--json", "outbox", "--state", "pending")),
            5,
            "the conversation to be pushed",
        )
        first.kill()
        first.wait(timeout=5)
    # The kernel released the lock with the process; the pid file it left behind lies.
    assert pid_path(db).exists()
    assert daemon_info(db) == (False, None)
    # A push cut short by the kill is replayed at once by the next daemon, not after a lease.
    op_id = one_json(invoke("--db", str(db), "--json", "send", cid, "after kill"))["op_id"]
    with Store(db) as store:
        assert [i.op_id for i in store.claim()] == [op_id]
    with daemon_process(db, notifications) as second:
        notifications.expect("READY=1")
        assert daemon_info(db) == (True, second.pid)
        wait_for(lambda: outbox_state(db, op_id) is OutboxState.SENT, 5, "the replay")
        code, took, err = stop(second, signal.SIGINT)
        assert code == 0, err
        assert took < 5
    assert [m["body"] for m in srv.state.all_messages(cid)] == ["after kill"]


def test_debug_logs_never_carry_the_token(
    tmp_path: Path, srv: ServerThread, notifications: Notifications
) -> None:
    db = tmp_path / "a.db"
    login(db, srv.url, "t-alice")
    cid = new_conversation(db, "t-bob")
    one_json(invoke("--db", str(db), "--json", "send", cid, "logged"))
    token = json.loads(token_path(db).read_text())["token"]
    with daemon_process(db, notifications, "--log-level", "debug") as proc:
        notifications.expect("READY=1")
        # The push goes over REST beside the live handshake: wait for both.
        wait_for(
            lambda: _pushed_and_live(one_json(invoke("--db", str(db), "--json", "status"))),
            10,
            "the push, and the live channel",
        )
        code, _took, err = stop(proc)
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    # The live channel's first frame carries the token; websockets logs frames at DEBUG.
    assert any(r["level"] == "debug" and r["logger"].startswith("websockets") for r in records)
    assert any("auth" in r["msg"] and "[redacted]" in r["msg"] for r in records)
    assert token not in err


def test_poll_only_never_opens_the_live_channel(
    tmp_path: Path, srv: ServerThread, notifications: Notifications
) -> None:
    db = tmp_path / "a.db"
    login(db, srv.url, "po-alice")
    cid = new_conversation(db, "po-bob")
    one_json(invoke("--db", str(db), "--json", "send", cid, "over REST"))
    with daemon_process(db, notifications, "--poll-only") as proc:
        notifications.expect("READY=1")

        def polling() -> bool:
            doc = one_json(invoke("--db", str(db), "--json", "status"))
            return bool(
                doc["state"] == "live" and doc["mode"] == "polling" and doc["last_error"] is None
            )

        # LIVE without a link, and no failed handshake to explain it: none was tried.
        wait_for(polling, 10, "the daemon polling with nothing pending")
        assert one_json(invoke("--db", str(db), "--json", "status"))["outbox"]["pending"] == 0
        code, _took, err = stop(proc)
    assert code == 0, err


def _pushed_and_live(doc: dict[str, Any]) -> bool:
    return bool(doc["outbox"]["pending"] == 0 and doc["mode"] == "live")


def test_not_logged_in_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    Store(db).close()
    result = run_cli("--db", str(db), "daemon")
    assert result.returncode == 1
    assert "not logged in" in result.stderr and "Traceback" not in result.stderr
    assert daemon_info(db) == (False, None)
    missing = tmp_path / "nowhere" / "none.db"
    result = run_cli("--db", str(missing), "daemon")
    assert result.returncode == 1 and "not logged in" in result.stderr
    assert not missing.parent.exists()


def _damage_garbage(db: Path) -> None:
    db.write_bytes(b"this is not a database, it is a shopping list\n" * 200)


def _damage_page(db: Path) -> None:
    # A real store, with pages scribbled over past the header.
    data = bytearray(db.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 + 100 : 3 * 4096] = b"\xa5" * (2 * 4096 - 100)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_damage_garbage, _damage_page])
def test_corrupt_store_exits_65_and_leaves_the_file(
    tmp_path: Path, srv: ServerThread, damage: Any
) -> None:
    db = tmp_path / "a.db"
    login(db, srv.url, "c-alice")
    for i in range(3):
        new_conversation(db, "c-bob", title=f"conversation {i} " + "x" * 150)
    damage(db)
    before = db.read_bytes()
    result = run_cli("--db", str(db), "daemon")
    assert result.returncode == EX_DATAERR, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "damaged" in json.loads(line)["msg"]
    assert "Traceback" not in result.stderr
    assert db.read_bytes() == before


# --- pieces, in-process ------------------------------------------------------------------------


def test_store_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    holder = StoreLock(db)
    holder.acquire()
    try:
        assert daemon_info(db) == (True, os.getpid())
        with pytest.raises(StoreLockHeld) as caught:
            StoreLock(db).acquire(timeout=0)
        assert caught.value.pid == os.getpid()
        assert oct(os.stat(holder.path).st_mode & 0o777) == "0o600"
    finally:
        holder.release()
    assert daemon_info(db) == (False, None)
    assert not pid_path(db).exists()
    with StoreLock(db):  # free again
        pass


def test_notify_sends_a_datagram_and_needs_a_socket() -> None:
    assert notify("READY=1", environ={}) is False
    name = f"syncengine-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)  # the abstract namespace, written '@name' in NOTIFY_SOCKET
        sock.settimeout(5)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(100) == b"READY=1"


async def _logged_in_store(url: str, db: Path) -> str:
    """A store with one sent conversation and message; returns the conversation id."""
    async with SyncEngine(db, connect=False) as engine:
        await engine.login(url, "j-alice", "pw")
        conv = await engine.create_conversation("jobs", members=["j-bob"])
        await engine.send(conv.id, "sent")
        await engine.sync_once()
        assert engine.store.health().pending == 0
        return conv.id


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_jobs_prune_sent_and_expire_typing(tmp_path: Path) -> None:
    async with run_server(tmp_path / "server") as server:
        db = tmp_path / "a.db"
        cid = await _logged_in_store(server.url, db)
        with Store(db) as store:
            store.apply_typing(cid, "j-bob", typing=True, ts_ms=1, ttl_s=0.01)
            assert len(store.outbox(OutboxState.SENT)) == 2
        config = DaemonConfig(
            db_path=db, prune_s=0.2, prune_after_s=0.0, typing_expiry_s=0.2, checkpoint_s=0.2
        )
        daemon = Daemon(config)
        task = asyncio.create_task(daemon.run())
        try:
            with Store(db) as store:
                await _until(lambda: not store.outbox(OutboxState.SENT), 5, "prune-sent")
            # The typing row expired long ago: the daemon deleted it, nothing is left to prune.
            with Store(db) as store:
                await _until(lambda: store.prune_typing() == 0, 5, "typing-expiry")
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 10) == 0


async def test_logout_and_login_while_running(tmp_path: Path) -> None:
    async with run_server(tmp_path / "server") as server:
        db = tmp_path / "a.db"
        await _logged_in_store(server.url, db)
        daemon = Daemon(DaemonConfig(db_path=db, token_watch_s=0.1))
        task = asyncio.create_task(daemon.run())
        try:
            await _until(
                lambda: daemon.engine is not None and daemon.engine.state is ConnectionState.LIVE,
                10,
                "live",
            )
            token_path(db).unlink()  # what 'syncengine logout' does to the daemon's files
            await _until(
                lambda: (
                    daemon.engine is not None and daemon.engine.state is ConnectionState.OFFLINE
                ),
                5,
                "the engine to stop after logout",
            )
            async with SyncEngine(db, connect=False) as engine:
                await engine.login(server.url, "j-alice", "pw")
            await _until(
                lambda: daemon.engine is not None and daemon.engine.state is ConnectionState.LIVE,
                10,
                "live again after login",
            )
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 10) == 0


async def test_refused_credentials_wait_for_a_new_login(tmp_path: Path) -> None:
    async with run_server(tmp_path / "server") as server:
        db = tmp_path / "a.db"
        await _logged_in_store(server.url, db)
        daemon = Daemon(DaemonConfig(db_path=db, token_watch_s=0.1))
        task = asyncio.create_task(daemon.run())
        try:
            await _until(
                lambda: daemon.engine is not None and daemon.engine.state is ConnectionState.LIVE,
                10,
                "live",
            )
            token_path(db).write_text(json.dumps({"token": "revoked-or-expired"}))
            await _until(
                lambda: daemon.engine is not None and daemon.engine.state is ConnectionState.FAILED,
                10,
                "the refusal",
            )
            await asyncio.sleep(0.3)
            assert not task.done()  # it waits for a login instead of exiting
            async with SyncEngine(db, connect=False) as engine:
                await engine.login(server.url, "j-alice", "pw")
            await _until(
                lambda: daemon.engine is not None and daemon.engine.state is ConnectionState.LIVE,
                10,
                "live again after login",
            )
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 10) == 0


async def test_second_daemon_in_process_gets_75(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    Store(db).close()
    with StoreLock(db):
        assert await Daemon(DaemonConfig(db_path=db)).run() == EX_TEMPFAIL


def test_example_systemd_unit_matches_the_daemon() -> None:
    import configparser

    unit_file = Path(__file__).resolve().parent.parent / "examples" / "syncengine-daemon.service"
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(unit_file.read_text(encoding="utf-8"))
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {str(EX_DATAERR), str(EX_TEMPFAIL)}
    assert service["Environment"].startswith("SYNCENGINE_DB=")
    assert service["ExecStart"].endswith("syncengine daemon")


@pytest.mark.parametrize("delay", [0.0, 0.3, 0.6])
def test_sigterm_during_start_up_is_a_clean_stop(
    tmp_path: Path, srv: ServerThread, notifications: Notifications, delay: float
) -> None:
    # systemd may stop a daemon at any moment, including while it imports and opens the
    # store: that must still be exit 0 with the lock released, never a death by signal. The
    # daemon says STATUS=starting as soon as it has taken over SIGTERM (before that, only the
    # interpreter's own start-up runs, where systemd counts death by SIGTERM as a clean stop);
    # the stop lands at several points after that, however slow the machine is.
    db = tmp_path / "a.db"
    login(db, srv.url, "early-alice")
    with daemon_process(db, notifications) as proc:
        notifications.expect("STATUS=starting", timeout=60)
        time.sleep(delay)
        code, took, err = stop(proc)
    assert code == 0, err
    assert took < 5
    assert daemon_info(db) == (False, None)


def test_daemon_says_starting_before_it_is_ready(
    tmp_path: Path, srv: ServerThread, notifications: Notifications
) -> None:
    db = tmp_path / "a.db"
    login(db, srv.url, "early-bob")
    with daemon_process(db, notifications) as proc:
        first = notifications.expect("STATUS=", timeout=60)
        assert "STATUS=starting" in first and "READY=1" not in first
        notifications.expect("READY=1", timeout=60)
        code, _took, err = stop(proc)
    assert code == 0, err


# --- typed failures and timer ownership (issue 11) ----------------------------------------------


def test_exit_codes_come_from_the_failure_type() -> None:
    from syncengine.daemon import EX_FAILURE, exit_code_for
    from syncengine.errors import (
        NotLoggedIn,
        SchemaTooNew,
        StoreCorrupt,
        StoreLocked,
        SyncStopped,
        TLSVerificationFailed,
    )

    assert exit_code_for(StoreCorrupt("x", path="a.db")) == EX_DATAERR
    assert exit_code_for(SchemaTooNew("x")) == EX_DATAERR
    assert exit_code_for(StoreLockHeld("x", pid=1)) == EX_TEMPFAIL
    for failure in (NotLoggedIn("x"), StoreLocked("x"), SyncStopped("x")):
        assert exit_code_for(failure) == EX_FAILURE
    assert exit_code_for(TLSVerificationFailed("x")) == EX_FAILURE
    assert exit_code_for(RuntimeError("a bug")) == EX_FAILURE


@pytest.mark.parametrize(
    ("failure", "code"),
    [("corrupt", EX_DATAERR), ("stopped", 1), ("auth", None)],
)
def test_a_failed_engine_stops_the_daemon_by_the_type_of_its_failure(
    tmp_path: Path, failure: str, code: int | None
) -> None:
    from syncengine.errors import AuthFailed, StoreCorrupt, SyncStopped
    from syncengine.events import ConnectionStateChanged

    errors = {
        "corrupt": StoreCorrupt("damaged", path="a.db"),
        "stopped": SyncStopped("boom"),
        "auth": AuthFailed("refused"),
    }

    error = errors[failure]

    class Failed:
        """Stands in for an engine: only its typed failure matters, not the reason text."""

        failure = error

    async def go() -> Daemon:
        daemon = Daemon(DaemonConfig(db_path=tmp_path / "a.db"))
        change = ConnectionStateChanged(
            old=ConnectionState.LIVE, new=ConnectionState.FAILED, reason="words, not a type"
        )
        daemon._on_state(Failed(), change)  # type: ignore[arg-type]
        return daemon

    daemon = asyncio.run(go())
    if code is None:
        assert not daemon._stop.is_set()  # refused credentials wait for a new login
    else:
        assert daemon._stop.is_set() and daemon._exit_code == code


async def test_safety_pull_is_the_engines_timer_set_by_the_daemon(tmp_path: Path) -> None:
    async with run_server(tmp_path / "server") as server:
        db = tmp_path / "a.db"
        await _logged_in_store(server.url, db)

        async def pulls_while_live(safety_pull_s: float, watch_s: float) -> bool:
            daemon = Daemon(DaemonConfig(db_path=db, safety_pull_s=safety_pull_s))
            task = asyncio.create_task(daemon.run())
            try:
                await _until(
                    lambda: (
                        daemon.engine is not None and daemon.engine.state is ConnectionState.LIVE
                    ),
                    10,
                    "live",
                )
                with Store(db) as store:
                    first = store.health().last_sync_at
                    deadline = time.monotonic() + watch_s
                    while time.monotonic() < deadline:
                        if store.health().last_sync_at != first:
                            return True
                        await asyncio.sleep(0.05)
                return False
            finally:
                daemon.request_stop()
                assert await asyncio.wait_for(task, 10) == 0

        assert await pulls_while_live(0.3, 5.0)  # a quiet live link: only the timer pulls
        assert not await pulls_while_live(60.0, 1.5)


def test_safety_pull_option_reaches_the_daemon_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import syncengine.daemon as daemon_module

    configs: list[DaemonConfig] = []
    monkeypatch.setattr(daemon_module, "setup_logging", lambda level: None)
    monkeypatch.setattr(
        daemon_module, "run_daemon", lambda config, early_signals: configs.append(config) or 0
    )
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = invoke("--db", str(tmp_path / "a.db"), "daemon", "--safety-pull", "7")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert result.exit_code == 0, result.stderr
    (config,) = configs
    assert config.safety_pull_s == 7.0
    kwargs = config.engine_kwargs({"ca_file": "ca.pem"})
    assert kwargs == {"ca_file": "ca.pem", "safety_pull_s": 7.0}
