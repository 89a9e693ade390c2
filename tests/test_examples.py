"""Every example runs as its docstring says, right after the quickstart, on the same server.

The module's server gets the quickstart first (alice with ``alice-secret``, bob with
``bob-secret``, logged in through the real CLI); then each example runs as a subprocess with
the password the way its docstring gives it (SYNCENGINE_PASSWORD, or stdin). Engine errors
are one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from syncengine import BlockingEngine
from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with ServerThread(
        ServerConfig(data_dir=tmp_path_factory.mktemp("srv"), **TEST_DEFAULTS)
    ) as server:
        quickstart(tmp_path_factory.mktemp("quickstart"), server.url)
        yield server


def quickstart(cwd: Path, url: str) -> None:
    """The quickstart's logins, through the real CLI: alice and bob with their passwords."""
    for user in ("alice", "bob"):
        done = subprocess.run(
            [sys.executable, "-m", "syncengine.cli", "--db", f"{user}.db", "login", url, user],
            cwd=cwd,
            env={**os.environ, "SYNCENGINE_PASSWORD": f"{user}-secret"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


def start(
    script: str, *args: str, cwd: Path, server: Any, password: str | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "SYNCENGINE_SERVER": server.url, "PYTHONUNBUFFERED": "1"}
    env.pop("SYNCENGINE_PASSWORD", None)
    if password is not None:
        env["SYNCENGINE_PASSWORD"] = password
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


_readers: dict[int, queue.Queue[str]] = {}


def read_until(stream: IO[str], needle: str, timeout: float = 20.0) -> list[str]:
    """Read lines until one contains ``needle`` (bounded in time; a thread per stream)."""
    q = _readers.get(id(stream))
    if q is None:
        q = _readers[id(stream)] = queue.Queue()
        threading.Thread(target=lambda: [q.put(line) for line in stream], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line.rstrip("\n"))
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen within {timeout}s; got {seen}")


def send_line(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def test_chat_two_terminals(tmp_path: Path, srv: Any) -> None:
    alice = start(
        "chat.py",
        "--user",
        "alice",
        "--with",
        "bob",
        cwd=tmp_path,
        server=srv,
        password="alice-secret",
    )
    try:
        assert alice.stdout is not None
        read_until(alice.stdout, "chatting with bob")
        bob = start(
            "chat.py",
            "--user",
            "bob",
            "--with",
            "alice",
            cwd=tmp_path,
            server=srv,
            password="bob-secret",
        )
        try:
            assert bob.stdout is not None
            read_until(bob.stdout, "chatting with alice")
            send_line(alice, "hello bob")
            read_until(bob.stdout, "[alice] hello bob")
            # Your own message is shown once (when typed), not again when it comes back.
            seen = read_until(alice.stdout, "delivered")
            send_line(alice, "")  # an empty line means "typing"
            read_until(bob.stdout, "alice is typing")
            send_line(bob, "hi alice")
            seen += read_until(alice.stdout, "[bob] hi alice")
            assert sum("hello bob" in line for line in seen) == 1, seen
            send_line(bob, "/quit")
            assert bob.wait(20) == 0
            assert bob.stderr is not None and "Task was destroyed" not in bob.stderr.read()
        finally:
            bob.kill()
        send_line(alice, "/quit")
        assert alice.wait(20) == 0
    finally:
        alice.kill()


def test_echo_bot_answers(tmp_path: Path, srv: Any) -> None:
    bot = start(
        "echo_bot.py",
        "--user",
        "echobot",
        "--max-replies",
        "1",
        cwd=tmp_path,
        server=srv,
        password="echobot-secret",
    )
    try:
        assert bot.stdout is not None
        read_until(bot.stdout, "is listening")
        with BlockingEngine(tmp_path / "carol.db", **FAST) as carol:
            carol.login(srv.url, "carol", "pw")
            conv = carol.create_conversation("Echo", members=["echobot"])
            carol.send(conv.id, "ping")
            read_until(bot.stdout, "answered carol")
            assert bot.wait(20) == 0
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if [m.body for m in carol.messages(conv.id).messages] == ["ping", "PING"]:
                    break
                time.sleep(0.05)
            assert [m.body for m in carol.messages(conv.id).messages] == ["ping", "PING"]
    finally:
        bot.kill()


def test_blocking_script(tmp_path: Path, srv: Any) -> None:
    proc = start(
        "blocking_script.py",
        "--user",
        "alice",
        "--to",
        "bob",
        "build passed",
        cwd=tmp_path,
        server=srv,
        password="alice-secret",
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "alice: build passed" in out
    assert err == "", err  # no "Task was destroyed but it is pending!" at exit


def test_blocking_script_password_on_stdin(tmp_path: Path, srv: Any) -> None:
    proc = start(
        "blocking_script.py",
        "--user",
        "bob",
        "--to",
        "alice",
        "from stdin",
        cwd=tmp_path,
        server=srv,
    )
    out, err = proc.communicate("bob-secret\n", timeout=60)
    assert proc.returncode == 0, err
    assert "bob: from stdin" in out
    assert err == "", err


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("blocking_script.py", ("--user", "alice", "--to", "bob", "x")),
        ("chat.py", ("--user", "alice", "--with", "bob")),
        ("echo_bot.py", ("--user", "alice")),
        ("status_monitor.py", ("--user", "alice", "--duration", "1")),
    ],
)
def test_engine_error_is_one_line(
    tmp_path: Path, srv: Any, script: str, args: tuple[str, ...]
) -> None:
    """A wrong password (the old examples assumed ``secret``) is one line, exit 1."""
    proc = start(script, *args, cwd=tmp_path, server=srv, password="secret")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def test_examples_say_how_to_run_after_the_quickstart() -> None:
    """The docstrings name the venv's python and the quickstart's users, not a bare python."""
    for script in ("blocking_script.py", "chat.py", "echo_bot.py", "status_monitor.py"):
        doc = (EXAMPLES / script).read_text(encoding="utf-8").split('"""')[1]
        assert f".venv/bin/python examples/{script}" in doc, script
        assert "python examples/" not in doc.replace(".venv/bin/python examples/", ""), script


def test_status_monitor(tmp_path: Path, srv: Any) -> None:
    proc = start(
        "status_monitor.py",
        "--user",
        "alice",
        "--every",
        "0.3",
        "--duration",
        "1.5",
        cwd=tmp_path,
        server=srv,
        password="alice-secret",
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "state syncing -> live" in out
    assert "health state=live" in out
