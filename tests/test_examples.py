"""Every example runs against a real reference server, as a user would run it."""

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
        yield server


def start(script: str, *args: str, cwd: Path, server: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "SYNCENGINE_SERVER": server.url, "PYTHONUNBUFFERED": "1"}
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
    alice = start("chat.py", "--user", "alice", "--with", "bob", cwd=tmp_path, server=srv)
    try:
        assert alice.stdout is not None
        read_until(alice.stdout, "chatting with bob")
        bob = start("chat.py", "--user", "bob", "--with", "alice", cwd=tmp_path, server=srv)
        try:
            assert bob.stdout is not None
            read_until(bob.stdout, "chatting with alice")
            send_line(alice, "hello bob")
            read_until(bob.stdout, "[alice] hello bob")
            send_line(alice, "")  # an empty line means "typing"
            read_until(bob.stdout, "alice is typing")
            send_line(bob, "hi alice")
            read_until(alice.stdout, "[bob] hi alice")
            send_line(bob, "/quit")
            assert bob.wait(20) == 0
        finally:
            bob.kill()
        send_line(alice, "/quit")
        assert alice.wait(20) == 0
    finally:
        alice.kill()


def test_echo_bot_answers(tmp_path: Path, srv: Any) -> None:
    bot = start("echo_bot.py", "--user", "echobot", "--max-replies", "1", cwd=tmp_path, server=srv)
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
    proc = start("blocking_script.py", "--to", "alice", "build passed", cwd=tmp_path, server=srv)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "reporter: build passed" in out


def test_status_monitor(tmp_path: Path, srv: Any) -> None:
    proc = start(
        "status_monitor.py",
        "--user",
        "monitor",
        "--every",
        "0.3",
        "--duration",
        "1.5",
        cwd=tmp_path,
        server=srv,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "state syncing -> live" in out
    assert "health state=live" in out
