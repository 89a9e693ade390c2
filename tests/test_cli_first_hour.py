"""Issue 14, a new user's first hour: each item driven through the real CLI (subprocesses).

Every mistake is one line on stderr with the right exit status, never a traceback; hints are
pasteable; the CLI fits in pipes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread
from tests.test_cli import assert_user_error, one_json, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("server"), **TEST_DEFAULTS)
    with ServerThread(config) as server:
        yield server


def cli(*args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, input=input, env={"NO_COLOR": "1", **env})


def logged_in(tmp_path: Path, srv: ServerThread, user: str = "alice") -> Path:
    db = tmp_path / f"{user}.db"
    done = cli("--db", str(db), "login", srv.url, user, input=f"{user}-pw\n")
    assert done.returncode == 0, done.stderr
    return db


# --- item 2: hostile login input is one line, exit 2 for a malformed URL ------------------------


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:99999", "http://127.0.0.1:abc", "http://[::1", "ftp://host", "nohost"],
)
def test_malformed_url_is_a_usage_error(tmp_path: Path, url: str) -> None:
    db = tmp_path / "a.db"
    done = cli("--db", str(db), "login", url, "alice", input="pw\n")
    assert_user_error(done, "SERVER_URL", code=2)
    assert not db.exists()


def test_non_utf8_arguments_are_a_usage_error(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    bad = os.fsdecode(b"al\xffice")
    done = cli("--db", str(db), "login", "http://127.0.0.1:1", bad, input="pw\n")
    assert_user_error(done, "not valid UTF-8", code=2)
    done = cli("--db", str(db), "login", "http://127.0.0.1:1", "a", SYNCENGINE_PASSWORD=bad)
    assert_user_error(done, "not valid UTF-8", code=2)
    assert not db.exists()


# --- item 3: global options before or after the command ------------------------------------------


def test_global_options_after_the_command(tmp_path: Path, srv: ServerThread) -> None:
    db = logged_in(tmp_path, srv)
    before = one_json(cli("--db", str(db), "--json", "status"))
    after = one_json(cli("status", "--json", "--db", str(db)))
    mixed = one_json(cli("--json", "status", f"--db={db}"))
    assert before["user"] == after["user"] == mixed["user"] == "alice"
    conv = one_json(cli("create", "T", "--member", "bob", "--db", str(db), "--json"))["id"]
    # after "--" nothing is an option: the text "--json" is sent as is
    op = cli("--db", str(db), "--json", "send", conv, "--", "--json")
    assert one_json(op)["op_id"]
    msgs = one_json(cli("messages", conv, "--json", "--db", str(db)))
    assert [m["body"] for m in msgs] == ["--json"]


# --- item 4: a read-only store ------------------------------------------------------------------


def test_read_only_store_reads_and_refuses_writes(tmp_path: Path, srv: ServerThread) -> None:
    db = logged_in(tmp_path, srv)
    os.chmod(db, 0o444)
    try:
        assert cli("--db", str(db), "status").returncode == 0
        assert cli("--db", str(db), "conversations").returncode == 0
        assert_user_error(cli("--db", str(db), "create", "T"), "read-only")
        assert_user_error(cli("--db", str(db), "sync"), "read-only")
        mode = stat.S_IMODE(db.stat().st_mode)
        assert mode & 0o200 == 0, oct(mode)  # never made writable again
        assert mode & ~0o444 == 0, oct(mode)
    finally:
        os.chmod(db, 0o600)


# --- item 5: no file until a login succeeds; a store without an account ---------------------------


def test_failed_login_leaves_nothing(tmp_path: Path, srv: ServerThread) -> None:
    logged_in(tmp_path, srv, "dora")  # dora exists with password dora-pw
    db = tmp_path / "sub" / "x.db"
    assert_user_error(cli("--db", str(db), "login", srv.url, "dora", input="wrong\n"), "bad_")
    assert_user_error(
        cli("--db", str(db), "login", "http://127.0.0.1:1", "u", input="pw\n"), "refused"
    )
    assert not (tmp_path / "sub").exists()
    done = cli("--db", str(db), "status")
    assert_user_error(done, f"not logged in (no store at {db}): run 'syncengine --db {db} login")


def test_store_without_account_says_not_logged_in(tmp_path: Path) -> None:
    from syncengine.store import Store

    db = tmp_path / "empty.db"
    Store(db).close()
    for args in (["status"], ["conversations"], ["outbox"], ["create", "T"]):
        done = cli("--db", str(db), *args)
        assert_user_error(done, f"not logged in: run 'syncengine --db {db} login SERVER_URL USER'")


# --- item 6: hints are pasteable ------------------------------------------------------------------


def test_hints_carry_db(tmp_path: Path, srv: ServerThread) -> None:
    db = logged_in(tmp_path, srv)
    assert cli("--db", str(db), "logout").returncode == 0
    done = cli("--db", str(db), "sync")
    hint = f"run 'syncengine --db {db} login {srv.url} alice'"
    assert_user_error(done, hint)
    # ...and the hint, pasted, works
    argv = hint.split("'")[1].split()[1:]
    assert cli(*argv, input="alice-pw\n").returncode == 0
    assert one_json(cli("--db", str(db), "--json", "sync"))["failed"] == 0


# --- item 7: a body from stdin or a file ----------------------------------------------------------


def test_send_from_stdin_and_from_a_file(tmp_path: Path, srv: ServerThread) -> None:
    db = logged_in(tmp_path, srv)
    conv = one_json(cli("--db", str(db), "--json", "create", "T"))["id"]
    assert cli("--db", str(db), "send", conv, "-", input="from stdin\n").returncode == 0
    big = tmp_path / "big.txt"
    big.write_text("x" * 16_000 + "\n", encoding="utf-8")
    assert cli("--db", str(db), "send", conv, "--file", str(big)).returncode == 0
    msgs = one_json(cli("--db", str(db), "--json", "messages", conv))
    assert [m["body"] for m in msgs] == ["from stdin", "x" * 16_000]
    big.write_text("x" * 16_001, encoding="utf-8")
    assert_user_error(cli("--db", str(db), "send", conv, "--file", str(big)), "16000")
    assert_user_error(cli("--db", str(db), "send", conv, "-", input=""), "empty")
    assert_user_error(cli("--db", str(db), "send", conv), "TEXT", code=2)
    assert "16,000" in cli("send", "--help").stdout


# --- item 8: pipes ----------------------------------------------------------------------------


def test_piped_tables_are_tab_separated(tmp_path: Path, srv: ServerThread) -> None:
    db = logged_in(tmp_path, srv)
    conv = one_json(cli("--db", str(db), "--json", "create", "Lunch", "--member", "bob"))["id"]
    cli("--db", str(db), "send", conv, "hello there")
    out = cli("--db", str(db), "conversations").stdout.splitlines()
    assert out[0] == "id\ttitle\tmembers\tunread\tstate"
    assert out[1].split("\t")[:3] == [conv, "Lunch", "alice,bob"]
    msgs = cli("--db", str(db), "messages", conv).stdout.splitlines()
    assert msgs[0].split("\t") == ["seq", "time", "sender", "message", "state"]
    assert msgs[1].split("\t")[2:] == ["alice", "hello there", "pending"]
    outbox = cli("--db", str(db), "outbox").stdout.splitlines()
    assert outbox[0].startswith("op_id\tkind\tstate")
    status = cli("--db", str(db), "status").stdout
    assert "\tstored\t" not in status and "stored\t1 conversation, 1 message" in status
    for text in (out, msgs, outbox):
        assert all(line == line.rstrip(" ") and "│" not in line for line in text)
    assert one_json(cli("--db", str(db), "--json", "conversations"))[0]["id"] == conv


# --- item 12: Ctrl-C ---------------------------------------------------------------------------


def test_ctrl_c_during_sync_exits_130(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "slow", **TEST_DEFAULTS)
    with ServerThread(config) as slow:
        db = logged_in(tmp_path, slow)
        conv = one_json(cli("--db", str(db), "--json", "create", "T"))["id"]
        slow.faults.delay_ms = 5000.0  # type: ignore[attr-defined]
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncengine.cli", "--db", str(db), "sync"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        slow.faults.delay_ms = 0.0  # type: ignore[attr-defined]
    assert proc.returncode == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Interrupted:"), err
    assert "queued" in lines[0]
    assert conv


def test_ctrl_c_at_the_password_prompt_exits_130(tmp_path: Path) -> None:
    import pty

    db = tmp_path / "a.db"
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "SYNCENGINE_PASSWORD"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncengine.cli",
            "--db",
            str(db),
            "login",
            "http://127.0.0.1:1",
            "a",
        ],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    os.close(follower)
    try:
        time.sleep(1.5)  # at the prompt
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(leader)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Aborted" not in err
    assert err.strip().splitlines()[-1].startswith("Interrupted: nothing was changed")
    assert not db.exists()


# --- item 13: demo | head -3 ---------------------------------------------------------------------


def test_demo_into_head_removes_its_temp_folder(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        f"'{sys.executable}' -m syncengine.cli demo --messages 4 | head -3",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert len(done.stdout.splitlines()) == 3
    assert "Traceback" not in done.stderr, done.stderr
    time.sleep(0.5)
    assert not list(tmp_path.glob("syncengine-demo-*"))


def test_demo_interrupted_removes_its_temp_folder(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncengine.cli", "demo", "--messages", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Interrupt it mid-story: once the live chat has begun (its stores and server exist),
    # whatever the machine's speed. A fixed sleep let a fast run finish first.
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "live chat:" in line:
            break
    assert seen and "live chat:" in seen[-1], seen
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert not list(tmp_path.glob("syncengine-demo-*"))


# --- item 14 ----------------------------------------------------------------------------------


def test_id_prefixes_are_accepted(tmp_path: Path, srv: ServerThread) -> None:
    db = logged_in(tmp_path, srv)
    conv = one_json(cli("--db", str(db), "--json", "create", "T"))["id"]
    op = one_json(cli("--db", str(db), "--json", "send", conv[:13], "by prefix"))["op_id"]
    msgs = one_json(cli("--db", str(db), "--json", "messages", conv[:13]))
    assert [m["op_id"] for m in msgs] == [op]
    assert_user_error(cli("--db", str(db), "retry", op[:13]), "not failed")


def test_server_url_is_stripped(tmp_path: Path, srv: ServerThread) -> None:
    db = tmp_path / "a.db"
    doc = one_json(cli("--db", str(db), "--json", "login", f" {srv.url} ", "erin", input="pw\n"))
    assert doc["server"] == srv.url


def test_help_fits(tmp_path: Path) -> None:
    import click

    from syncengine.cli import cli as group

    text = cli("--help").stdout
    summaries = text.split("Commands:")[1]
    assert "..." not in summaries, summaries
    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{name} {param.opts}"


def test_tail_says_when_a_daemon_runs(tmp_path: Path, srv: ServerThread) -> None:
    db = logged_in(tmp_path, srv)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "syncengine.cli", "--db", str(db), "daemon"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while (
            json.loads(cli("--db", str(db), "--json", "status").stdout)["daemon"]["running"]
            is False
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        done = cli("--db", str(db), "tail", "--timeout", "0.5")
        assert done.returncode == 0, done.stderr
        assert "showing new messages only" in done.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)


# --- item 11: errors name the cause; the daemon logs retries at INFO ------------------------------


def test_errors_name_the_cause(tmp_path: Path, srv: ServerThread) -> None:
    db = tmp_path / "a.db"
    refused = cli("--db", str(db), "login", "http://127.0.0.1:1", "a", input="pw\n")
    assert_user_error(refused, "connection refused")
    tls = cli("--db", str(db), "login", srv.url.replace("http://", "https://"), "a", input="pw\n")
    assert_user_error(tls, "TLS handshake failed")
    v1 = cli("--db", str(db), "login", f"{srv.url}/v1", "a", input="pw\n")
    assert_user_error(v1, f"drop the trailing /v1: {srv.url}")
    assert not db.exists()


def test_daemon_logs_retries_at_info_with_reason_and_delay(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "gone", **TEST_DEFAULTS)
    with ServerThread(config) as gone:
        db = logged_in(tmp_path, gone)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "syncengine.cli", "--db", str(db), "daemon"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4.0)
    daemon.send_signal(signal.SIGTERM)
    _out, err = daemon.communicate(timeout=30)
    retries = [json.loads(line) for line in err.splitlines() if "retrying in" in line]
    assert retries, err
    assert retries[0]["level"] == "info"
    assert "connection refused" in retries[0]["msg"]
    assert "stamina.retry_scheduled" not in err
