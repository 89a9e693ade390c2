"""``syncengine serve`` as a real subprocess: it starts, prints its URL, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from syncengine.cli import cli
from syncengine.server.simulate import lobby_id

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]

SERVE = [sys.executable, "-c", "from syncengine.cli import main; main()", "serve"]
URL_LINE = re.compile(r"syncengine server listening on (http://127\.0\.0\.1:\d+)")


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``serve`` and return the process and the URL it printed."""
    proc = subprocess.Popen(
        [*SERVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = URL_LINE.search(line)
        if match:
            return proc, match.group(1)
    proc.kill()
    _out, err = proc.communicate(timeout=10)
    raise AssertionError(f"serve did not print its URL; stderr:\n{err}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test, killed if the test left them running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_serve_runs_simulates_and_stops_on_sigterm(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc, url = _start(
        "--port", "0", "--data", str(tmp_path / "data"), "--simulate", "2",
        "--simulate-rate", "20",
    )  # fmt: skip
    processes.append(proc)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/v1/health").json()["ok"] is True
        token = client.post(
            "/v1/login", json={"user": "alice", "password": "pw", "device": "d"}
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        conversations = client.get("/v1/conversations", headers=headers).json()["conversations"]
        assert lobby_id(2) in [c["id"] for c in conversations]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            page = client.get("/v1/events", params={"since": 0}, headers=headers).json()
            if any(e["type"] == "message_received" for e in page["events"]):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the bots said nothing")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert token not in out + err
    assert (tmp_path / "data" / "server.sqlite3").exists()


def test_serve_takes_its_rate_limits(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    proc, url = _start(
        "--port", "0", "--data", str(tmp_path / "data"), "--rate", "0.5", "--burst", "2",
        "--pull-rate", "0.5", "--pull-burst", "3",
    )  # fmt: skip
    processes.append(proc)
    with httpx.Client(base_url=url, timeout=10) as client:
        token = client.post(
            "/v1/login", json={"user": "alice", "password": "pw", "device": "d"}
        ).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        pulls = [
            client.get("/v1/events", params={"since": 0}, headers=headers).status_code
            for _ in range(4)
        ]
        rest = [client.get("/v1/conversations", headers=headers).status_code for _ in range(3)]
    assert pulls == [200, 200, 200, 429]
    assert rest == [200, 200, 429]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)


def test_serve_stops_on_sigint_and_loads_users(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# operators\nalice:wonderland\n\n", encoding="utf-8")
    proc, url = _start(
        "--port", "0", "--data", str(tmp_path / "data"), "--closed-registration",
        "--users", str(users),
    )  # fmt: skip
    processes.append(proc)
    with httpx.Client(base_url=url, timeout=10) as client:
        ok = client.post(
            "/v1/login", json={"user": "alice", "password": "wonderland", "device": "d"}
        )
        assert ok.status_code == 200
        refused = client.post("/v1/login", json={"user": "bob", "password": "x", "device": "d"})
        assert refused.status_code == 401
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "wonderland" not in err


def test_a_bad_flag_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SERVE, "--data", str(tmp_path), "--port", "abc"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error:") and "--port" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault-5xx-rate", "2"], "--fault-5xx-rate"),
        (["--retention", "0"], "--retention"),
        (["--bogus"], "--bogus"),
        (["--simulate", "-1"], "--simulate"),
        (["--rate", "0"], "--rate"),
        (["--pull-burst", "0"], "--pull-burst"),
        (["--users", "/nonexistent/users.txt"], "--users"),
        (["--page-bytes", "100"], "--page-bytes"),
        (["--page-bytes", str(32 << 20)], "--page-bytes"),
        (["--max-connections-per-ip", "-1"], "--max-connections-per-ip"),
        (["--header-timeout", "0"], "--header-timeout"),
    ],
)
def test_bad_flags_in_process(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--data", str(tmp_path), *args])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error:") and message in line


def test_a_malformed_users_file_is_a_one_line_error(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("alice\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["serve", "--data", str(tmp_path), "--users", str(users)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "users.txt:1: expected name:password" in line


def test_a_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [*SERVE, "--port", port, "--data", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and port in errors[0]
    assert "Traceback" not in result.stderr


def test_the_hardening_options_reach_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncengine.server import cli as serve_cli
    from syncengine.server.config import ServerConfig

    seen: list[ServerConfig] = []

    async def fake_serve(config: ServerConfig, _users: object) -> None:
        seen.append(config)

    monkeypatch.setattr(serve_cli, "_serve", fake_serve)
    # serve configures the process's logging: not this test process's
    monkeypatch.setattr(serve_cli, "install_repeat_filter", lambda: None)
    monkeypatch.setattr(serve_cli.logging, "basicConfig", lambda **_kwargs: None)
    args = ["serve", "--data", str(tmp_path)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    default = seen.pop()
    assert (default.page_bytes, default.max_connections, default.max_connections_per_ip) == (
        4 * 1024 * 1024,
        None,
        128,
    )
    args += ["--page-bytes", "65536", "--max-connections", "500"]
    args += ["--max-connections-per-ip", "0", "--header-timeout", "2.5"]
    args += ["--keep-alive-timeout", "3", "--register-rate", "0.5", "--register-burst", "4"]
    args += ["--login-fail-rate", "0.1", "--login-fail-burst", "3"]
    args += ["--login-fail-ip-rate", "2", "--login-fail-ip-burst", "7"]
    args += ["--forwarded-allow-ips", "10.0.0.1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = seen.pop()
    assert (config.page_bytes, config.max_connections, config.max_connections_per_ip) == (
        65536,
        500,
        None,
    )
    assert (config.header_timeout_s, config.keep_alive_timeout_s) == (2.5, 3.0)
    assert (config.register_rate_per_s, config.register_burst) == (0.5, 4)
    assert (config.login_fail_rate_per_s, config.login_fail_burst) == (0.1, 3)
    assert (config.login_fail_ip_rate_per_s, config.login_fail_ip_burst) == (2.0, 7)
    assert config.forwarded_allow_ips == "10.0.0.1"
