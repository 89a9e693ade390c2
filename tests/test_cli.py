"""The ``syncengine`` command line, through click's CliRunner and as real subprocesses.

Every command runs against a real reference server on 127.0.0.1 (a free port). ``--json``
output must be exactly one JSON document with exactly the documented keys; user mistakes must
be one line on stderr with exit status 1, never a traceback.
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
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from syncengine.cli import cli
from syncengine.client.credentials import load_token
from syncengine.models import OutboxState
from syncengine.paths import token_path
from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread
from syncengine.store import Store

pytestmark = pytest.mark.integration

STATUS_KEYS = {
    "state",
    "server",
    "user",
    "cursor",
    "last_sync_at",
    "outbox",
    "oldest_pending_age_s",
    "conversations",
    "messages",
    "daemon",
    "lag",
    "gaps",
    "last_error",
    "next_retry_at",
    "mode",
}
CONVERSATION_KEYS = {"id", "title", "members", "unread"}
MESSAGE_KEYS = {
    "id",
    "op_id",
    "conversation_id",
    "seq",
    "sender",
    "body",
    "state",
    "created_at",
    "edited",
    "deleted",
    "reply_to",
    "reactions",
    "read_by",
}
OUTBOX_KEYS = {"op_id", "kind", "conversation_id", "state", "attempts", "last_error", "created_at"}
SYNC_KEYS = {"pushed", "pulled", "cursor", "pending", "failed", "daemon"}

#: The environment every invocation starts from: no password or store leaking in from outside.
CLEAN_ENV = {"SYNCENGINE_PASSWORD": None, "SYNCENGINE_DB": None, "NO_COLOR": None}


# --- helpers (also used by test_daemon.py and test_demo.py) --------------------------------------


def invoke(
    *args: str, input: str | None = None, env: dict[str, str | None] | None = None
) -> Result:
    """Run the CLI in-process with CliRunner (stdout and stderr kept apart)."""
    runner = CliRunner()
    return runner.invoke(
        cli, list(args), input=input, env={**CLEAN_ENV, **(env or {})}, catch_exceptions=False
    )


def one_json(result: Result | subprocess.CompletedProcess[str]) -> Any:
    """The single JSON document on stdout of a successful command."""
    code = result.exit_code if isinstance(result, Result) else result.returncode
    assert code == 0, f"exit {code}: {result.stderr}"
    text = result.stdout
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    return json.loads(text)  # raises on anything after the document


def assert_user_error(
    result: Result | subprocess.CompletedProcess[str], needle: str, code: int = 1
) -> None:
    """A user mistake: the exit status, one line on stderr naming it, no traceback."""
    got = result.exit_code if isinstance(result, Result) else result.returncode
    assert got == code, f"exit {got}: {result.stdout} {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


def run_cli(
    *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m syncengine.cli`` as a real subprocess."""
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    return subprocess.run(
        [sys.executable, "-m", "syncengine.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def login(db: Path, url: str, user: str) -> dict[str, Any]:
    """Log ``user`` in to ``url`` with store ``db`` (password ``<user>-pw``)."""
    return dict(
        one_json(invoke("--db", str(db), "--json", "login", url, user, input=f"{user}-pw\n"))
    )


def new_conversation(db: Path, *members: str, title: str = "t") -> str:
    args = [arg for m in members for arg in ("--member", m)]
    return str(one_json(invoke("--db", str(db), "--json", "create", title, *args))["id"])


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("server"), **TEST_DEFAULTS)
    with ServerThread(config) as server:
        yield server


@pytest.fixture
def alice(tmp_path: Path, srv: ServerThread) -> Path:
    db = tmp_path / "alice.db"
    login(db, srv.url, "alice")
    return db


@pytest.fixture
def bob(tmp_path: Path, srv: ServerThread) -> Path:
    db = tmp_path / "bob.db"
    login(db, srv.url, "bob")
    return db


# --- account -------------------------------------------------------------------------------------


def test_login_stores_the_account_and_a_private_token(tmp_path: Path, srv: ServerThread) -> None:
    db = tmp_path / "a.db"
    doc = one_json(
        invoke(
            "--db", str(db), "--json", "login", srv.url, "carol", "--device", "lap", input="pw\n"
        )
    )
    assert doc == {"server": srv.url, "user": "carol", "device": "lap", "protocol": "v1"}
    token = token_path(db)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    secret = json.loads(token.read_text())["token"]
    assert secret and secret not in doc.values()


def test_login_password_from_environment(tmp_path: Path, srv: ServerThread) -> None:
    db = tmp_path / "a.db"
    one_json(invoke("--db", str(db), "--json", "login", srv.url, "dave", input="first\n"))
    # The environment wins over stdin: a wrong stdin line is not read.
    result = invoke(
        "--db",
        str(db),
        "login",
        srv.url,
        "dave",
        input="wrong\n",
        env={"SYNCENGINE_PASSWORD": "first"},
    )
    assert result.exit_code == 0, result.stderr
    assert "Logged in as dave" in result.stdout


def test_login_refused_is_one_line(tmp_path: Path, srv: ServerThread) -> None:
    invoke("--db", str(tmp_path / "a.db"), "login", srv.url, "erin", input="right\n")
    result = invoke("--db", str(tmp_path / "b.db"), "login", srv.url, "erin", input="wrong\n")
    assert_user_error(result, "bad_credentials")
    assert not token_path(tmp_path / "b.db").exists()


def test_login_needs_a_password(tmp_path: Path, srv: ServerThread) -> None:
    result = invoke("--db", str(tmp_path / "a.db"), "login", srv.url, "frank", input="")
    assert_user_error(result, "no password")


def test_login_to_an_unreachable_server(tmp_path: Path) -> None:
    result = invoke("--db", str(tmp_path / "a.db"), "login", "http://127.0.0.1:9", "x", input="p\n")
    assert_user_error(result, "cannot reach")


def test_login_refuses_plain_http_to_a_remote_host(tmp_path: Path) -> None:
    result = invoke("--db", str(tmp_path / "a.db"), "login", "http://example.com", "x", input="p\n")
    assert_user_error(result, "--insecure")


def test_logout_keeps_the_data_and_forgets_the_token(alice: Path, srv: ServerThread) -> None:
    cid = new_conversation(alice, "bob")
    doc = one_json(invoke("--db", str(alice), "--json", "logout"))
    assert doc == {"logged_out": True, "had_token": True}
    assert not token_path(alice).exists()
    convs = one_json(invoke("--db", str(alice), "--json", "conversations"))
    assert [c["id"] for c in convs] == [cid]
    assert_user_error(invoke("--db", str(alice), "sync"), "logged out")


# --- status and reads ----------------------------------------------------------------------------


def test_status_json_has_exactly_the_documented_keys(alice: Path, srv: ServerThread) -> None:
    doc = one_json(invoke("--db", str(alice), "--json", "status"))
    assert set(doc) == STATUS_KEYS
    assert set(doc["outbox"]) == {"pending", "sending", "failed"}
    assert set(doc["daemon"]) == {"running", "pid"}
    assert doc["state"] == "offline"
    assert (doc["server"], doc["user"]) == (srv.url, "alice")
    assert doc["daemon"] == {"running": False, "pid": None}
    assert doc["outbox"] == {"pending": 0, "sending": 0, "failed": 0}
    assert doc["oldest_pending_age_s"] is None


def test_status_does_not_report_a_stale_connected_state(alice: Path) -> None:
    # A syncing process that died (kill -9) left "live" behind; no process holds the lock.
    with Store(alice) as store:
        store.set_meta(state="live")
    assert one_json(invoke("--db", str(alice), "--json", "status"))["state"] == "offline"


def test_queue_offline_then_sync_and_read_everywhere(
    alice: Path, bob: Path, srv: ServerThread
) -> None:
    cid = new_conversation(alice, "bob", title="Lunch")
    op1 = one_json(invoke("--db", str(alice), "--json", "send", cid, "noon?"))
    assert set(op1) == {"op_id"}
    op2 = one_json(invoke("--db", str(alice), "--json", "send", cid, "or 1pm"))["op_id"]

    status = one_json(invoke("--db", str(alice), "--json", "status"))
    assert status["outbox"] == {"pending": 3, "sending": 0, "failed": 0}
    assert status["oldest_pending_age_s"] >= 0
    outbox = one_json(invoke("--db", str(alice), "--json", "outbox"))
    assert all(set(item) == OUTBOX_KEYS for item in outbox)
    assert [(i["kind"], i["state"]) for i in outbox] == [
        ("create_conversation", "pending"),
        ("send", "pending"),
        ("send", "pending"),
    ]
    pending = one_json(invoke("--db", str(alice), "--json", "messages", cid))
    assert [(m["body"], m["state"], m["seq"]) for m in pending] == [
        ("noon?", "pending", None),
        ("or 1pm", "pending", None),
    ]

    done = one_json(invoke("--db", str(alice), "--json", "sync"))
    assert set(done) == SYNC_KEYS
    assert done["pushed"] == 3 and done["pending"] == 0 and done["daemon"] is False
    assert one_json(invoke("--db", str(alice), "--json", "outbox", "--state", "pending")) == []
    sent = one_json(invoke("--db", str(alice), "--json", "outbox", "--state", "sent"))
    assert {i["op_id"] for i in sent} >= {op1["op_id"], op2}

    one_json(invoke("--db", str(bob), "--json", "sync"))
    convs = one_json(invoke("--db", str(bob), "--json", "conversations"))
    assert convs == [{"id": cid, "title": "Lunch", "members": ["alice", "bob"], "unread": 2}]
    msgs = one_json(invoke("--db", str(bob), "--json", "messages", cid))
    assert all(set(m) == MESSAGE_KEYS for m in msgs)
    assert [(m["sender"], m["body"], m["state"]) for m in msgs] == [
        ("alice", "noon?", "sent"),
        ("alice", "or 1pm", "sent"),
    ]
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2
    assert msgs[0]["op_id"] == op1["op_id"]

    # Paging: --limit keeps the newest, --before goes back.
    last = one_json(invoke("--db", str(bob), "--json", "messages", cid, "--limit", "1"))
    assert [m["body"] for m in last] == ["or 1pm"]
    older = one_json(
        invoke("--db", str(bob), "--json", "messages", cid, "--before", str(last[0]["seq"]))
    )
    assert [m["body"] for m in older] == ["noon?"]


def test_send_wait_pushes_it_without_a_daemon(alice: Path, srv: ServerThread) -> None:
    cid = new_conversation(alice, "bob")
    op_id = one_json(invoke("--db", str(alice), "--json", "send", cid, "hi", "--wait"))["op_id"]
    with Store(alice) as store:
        item = store.outbox_item(op_id)
        assert item is not None and item.state is OutboxState.SENT
    server_bodies = [m["body"] for m in srv.state.all_messages(cid)]
    assert server_bodies == ["hi"]


def test_human_output_is_a_table(alice: Path) -> None:
    cid = new_conversation(alice, "bob", title="Plans")
    invoke("--db", str(alice), "send", cid, "hello there")
    result = invoke("--db", str(alice), "messages", cid)
    assert result.exit_code == 0
    assert "hello there" in result.stdout and "pending" in result.stdout
    convs = invoke("--db", str(alice), "conversations").stdout
    assert cid in convs and "Plans" in convs  # ids are never truncated
    status = invoke("--db", str(alice), "status").stdout
    assert "1 conversation," in status and "not running" in status


def test_no_color_is_honoured(alice: Path) -> None:
    cid = new_conversation(alice, "bob")
    invoke("--db", str(alice), "send", cid, "x")
    colour = invoke("--db", str(alice), "messages", cid, env={"FORCE_COLOR": "1"}).stdout
    assert "\x1b[33m" in colour  # pending is yellow on a (forced) terminal
    plain = invoke(
        "--db", str(alice), "messages", cid, env={"FORCE_COLOR": "1", "NO_COLOR": "1"}
    ).stdout
    assert "\x1b[33m" not in plain and "pending" in plain


# --- retry ---------------------------------------------------------------------------------------


def test_retry_requeues_failed_operations(alice: Path, srv: ServerThread) -> None:
    cid = new_conversation(alice, "bob")
    one_json(invoke("--db", str(alice), "--json", "sync"))
    op_id = one_json(invoke("--db", str(alice), "--json", "send", cid, "again"))["op_id"]
    with Store(alice) as store:
        assert [i.op_id for i in store.claim()] == [op_id]
        assert store.mark_failed(op_id, "unavailable", "parked for the test")
    failed = one_json(invoke("--db", str(alice), "--json", "outbox", "--state", "failed"))
    assert [(i["op_id"], i["last_error"]) for i in failed] == [
        (op_id, "unavailable: parked for the test")
    ]
    assert one_json(invoke("--db", str(alice), "--json", "status"))["outbox"]["failed"] == 1

    doc = one_json(invoke("--db", str(alice), "--json", "retry", op_id))
    assert doc == {"requeued": [op_id]}
    assert one_json(invoke("--db", str(alice), "--json", "outbox", "--state", "failed")) == []
    one_json(invoke("--db", str(alice), "--json", "sync"))
    assert [m["body"] for m in srv.state.all_messages(cid)] == ["again"]
    assert one_json(invoke("--db", str(alice), "--json", "retry", "--all")) == {"requeued": []}


def test_retry_mistakes(alice: Path) -> None:
    assert_user_error(invoke("--db", str(alice), "retry", "nope"), "no operation nope")
    assert_user_error(invoke("--db", str(alice), "retry"), "--all", code=2)
    assert_user_error(invoke("--db", str(alice), "retry", "x", "--all"), "--all", code=2)


# --- user mistakes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["messages", "no-such-conversation"], "no conversation no-such-conversation", 1),
        (["send", "no-such-conversation", "hi"], "no conversation no-such-conversation", 1),
        (["messages", "x", "--limit", "0"], "--limit", 2),
        (["outbox", "--state", "bogus"], "--state", 2),
        (["send"], "Missing argument", 2),
    ],
)
def test_user_mistakes_are_one_line(alice: Path, args: list[str], needle: str, code: int) -> None:
    assert_user_error(invoke("--db", str(alice), *args), needle, code)


def test_empty_message_is_refused(alice: Path) -> None:
    cid = new_conversation(alice, "bob")
    assert_user_error(invoke("--db", str(alice), "send", cid, ""), "body")


def test_reads_never_create_a_store(tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    for command in ("status", "conversations", "outbox"):
        assert_user_error(invoke("--db", str(db), command), "no store at")
    assert not db.exists()


def test_a_damaged_store_is_one_line_and_untouched(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    db.write_bytes(b"not a database at all\n" * 100)
    before = db.read_bytes()
    for command in ("status", "conversations", "outbox"):
        assert_user_error(invoke("--db", str(db), command), "damaged")
    assert db.read_bytes() == before


def test_commands_need_a_login(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    Store(db).close()
    assert_user_error(invoke("--db", str(db), "create", "t"), "not logged in: run")
    assert_user_error(invoke("--db", str(db), "sync"), "not logged in")


def test_db_from_the_environment(alice: Path) -> None:
    doc = one_json(invoke("--json", "status", env={"SYNCENGINE_DB": str(alice)}))
    assert doc["user"] == "alice"


# --- an unreachable server -----------------------------------------------------------------------


def test_server_away_sync_and_wait_exit_1_and_keep_the_work(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "gone", **TEST_DEFAULTS)
    server = ServerThread(config).start()
    db = tmp_path / "a.db"
    try:
        login(db, server.url, "alice")
    finally:
        server.stop()
    cid = new_conversation(db, "bob")
    op_id = one_json(invoke("--db", str(db), "--json", "send", cid, "later"))["op_id"]

    assert_user_error(invoke("--db", str(db), "sync", "--timeout", "5"), "stays queued")
    started = time.monotonic()
    result = invoke("--db", str(db), "--json", "send", cid, "now?", "--wait", "--timeout", "5")
    assert_user_error(result, "stays queued")
    assert time.monotonic() - started < 6
    with Store(db) as store:
        item = store.outbox_item(op_id)
        assert item is not None and item.state is OutboxState.PENDING
        assert store.health().pending == 3 and store.health().sending == 0


def _send_many(url: str, db: Path, cid: str, count: int, prefix: str = "m") -> None:
    """``count`` messages from the account of ``db``, pushed over HTTP in batches of 500."""
    token = load_token(db)
    ops = [
        {"op_id": f"{prefix}{i:05d}", "kind": "send", "conversation_id": cid, "body": f"m{i}"}
        for i in range(count)
    ]
    with httpx.Client(base_url=url, timeout=10) as client:
        for start in range(0, count, 500):
            response = client.post(
                "/v1/ops",
                json={"ops": ops[start : start + 500]},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()


def test_sync_waits_out_a_429_within_its_timeout(tmp_path: Path) -> None:
    # Pulls limited to one page at once and 2 a second: a 1,200-event catch-up (3 pages of
    # 500) meets 429 twice and must wait them out instead of exiting 1.
    config = ServerConfig(
        data_dir=tmp_path / "limited", pull_rate_per_s=2.0, pull_burst=1, **TEST_DEFAULTS
    )
    with ServerThread(config) as server:
        alice, bob = tmp_path / "alice.db", tmp_path / "bob.db"
        login(alice, server.url, "alice")
        login(bob, server.url, "bob")
        cid = new_conversation(alice, "bob")
        one_json(invoke("--db", str(alice), "--json", "sync"))
        _send_many(server.url, alice, cid, 1200)
        started = time.monotonic()
        done = one_json(invoke("--db", str(bob), "--json", "sync", "--timeout", "20"))
        assert done["pulled"] >= 1200
        assert time.monotonic() - started >= 0.5  # it did wait for the server's tokens
        with Store(bob) as store:
            assert len(store.messages(cid, limit=2000)) == 1200
        # A timeout that the server's pause does not fit gives up at once, work kept.
        one_json(invoke("--db", str(alice), "--json", "sync"))  # spends no pull token
        _send_many(server.url, alice, cid, 1200, prefix="n")
        result = invoke("--db", str(bob), "sync", "--timeout", "0.3")
        assert_user_error(result, "rate_limited")


# --- tail ----------------------------------------------------------------------------------------


def test_tail_prints_events_as_json_lines(alice: Path, bob: Path, srv: ServerThread) -> None:
    cid = new_conversation(alice, "bob")
    one_json(invoke("--db", str(alice), "--json", "sync"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncengine.cli", "--db", str(bob), "--json", "tail"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines: list[dict[str, Any]] = []

        def read_until(pred: Any) -> dict[str, Any]:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                assert line, f"tail ended early: {proc.stderr.read() if proc.stderr else ''}"
                doc = json.loads(line)
                lines.append(doc)
                if pred(doc):
                    return dict(doc)
            raise AssertionError(f"not seen; got {lines}")

        read_until(lambda d: d["event"] == "connection_state_changed" and d["new"] == "live")
        one_json(invoke("--db", str(alice), "--json", "send", cid, "tail me", "--wait"))
        got = read_until(lambda d: d["event"] == "message_received")
        assert (got["sender"], got["body"], got["conversation_id"]) == ("alice", "tail me", cid)
        assert {"pos", "seq", "message_id", "op_id", "ts_ms"} <= set(got)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tail_stops_after_count(alice: Path) -> None:
    result = invoke("--db", str(alice), "--json", "tail", "--count", "2", "--timeout", "10")
    assert result.exit_code == 0
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) == 2
    assert [d["event"] for d in docs] == ["connection_state_changed"] * 2


# --- every command as a real subprocess ----------------------------------------------------------


def test_every_command_as_a_subprocess(tmp_path: Path, srv: ServerThread) -> None:
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    doc = one_json(run_cli("--db", a, "--json", "login", srv.url, "sub-alice", input="pw\n"))
    assert doc["user"] == "sub-alice"
    # The store can also come from SYNCENGINE_DB, and the password from SYNCENGINE_PASSWORD.
    one_json(
        run_cli(
            "--json",
            "login",
            srv.url,
            "sub-bob",
            env={"SYNCENGINE_DB": b, "SYNCENGINE_PASSWORD": "pw"},
        )
    )
    cid = one_json(run_cli("--db", a, "--json", "create", "Sub", "--member", "sub-bob"))["id"]
    op_id = one_json(run_cli("--db", a, "--json", "send", cid, "one"))["op_id"]
    one_json(run_cli("--db", a, "--json", "send", cid, "two", "--wait"))
    assert set(one_json(run_cli("--db", a, "--json", "sync"))) == SYNC_KEYS
    assert set(one_json(run_cli("--db", a, "--json", "status"))) == STATUS_KEYS
    one_json(run_cli("--db", b, "--json", "sync"))
    convs = one_json(run_cli("--db", b, "--json", "conversations"))
    assert [set(c) for c in convs] == [CONVERSATION_KEYS]
    msgs = one_json(run_cli("--db", b, "--json", "messages", cid))
    assert [m["body"] for m in msgs] == ["one", "two"]
    outbox = one_json(run_cli("--db", a, "--json", "outbox"))
    assert op_id in {i["op_id"] for i in outbox}
    assert one_json(run_cli("--db", a, "--json", "retry", "--all")) == {"requeued": []}
    tail = run_cli("--db", b, "--json", "tail", "--count", "1", "--timeout", "10")
    assert json.loads(tail.stdout)["event"] == "connection_state_changed"
    assert one_json(run_cli("--db", a, "--json", "logout"))["logged_out"] is True
    assert_user_error(run_cli("--db", a, "messages", "nope"), "no conversation nope")
    assert_user_error(run_cli("--db", a, "sync"), "logged out")


def test_version_and_help() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and "syncengine" in result.stdout
    help_text = invoke("--help").stdout
    for name in ("login", "status", "send", "daemon", "demo", "serve"):
        assert name in help_text


# --- the send path (issue 11) --------------------------------------------------------------------


def test_a_cli_send_goes_through_the_engine_and_emits_message_queued(
    alice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncengine import SyncEngine
    from syncengine.events import MessageQueued
    from syncengine.local import writes

    seen: list[MessageQueued] = []

    class Watched(SyncEngine):
        async def open(self) -> None:
            await super().open()
            self.on(MessageQueued, seen.append)

    monkeypatch.setattr(writes, "SyncEngine", Watched)
    cid = one_json(invoke("--db", str(alice), "--json", "create", "emits"))["id"]
    body = "queued by the CLI"
    op_id = one_json(invoke("--db", str(alice), "--json", "send", cid, body))["op_id"]
    assert [(e.message.op_id, e.message.body) for e in seen] == [(op_id, body)]
