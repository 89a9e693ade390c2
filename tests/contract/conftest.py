"""Fixtures of the contract suite: a server, a fault proxy in front of it, engines behind it.

The ``seed`` fixture (from ``tests/conftest.py``) reads ``SYNCENGINE_SEED`` and prints it;
scenarios derive every random choice from it. The soak tier (``SYNCENGINE_SOAK=1``) runs the
same code about 40x larger (see :func:`tests.contract.oracle.scale`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from syncengine import SyncEngine
from syncengine.models import ConnectionState
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR
from tests.contract.proxy import FaultProxy

EngineFactory = Callable[..., Awaitable[SyncEngine]]

SYNCENGINE = Path(sys.executable).with_name("syncengine")


class ServerProcess:
    """``syncengine serve`` in a subprocess on 127.0.0.1, a free port, a given data directory:
    it can be killed with SIGKILL, and it keeps its own clock (the tests may skew theirs)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> int:
        self.proc = await asyncio.create_subprocess_exec(
            str(SYNCENGINE),
            "serve",
            "--port",
            "0",
            "--data",
            str(self.data_dir),
            "--log-level",
            "warning",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30 * TIME_FACTOR):
            while line := (await self.proc.stdout.readline()).decode():
                if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
                    self.port = int(m.group(1))
                    return self.port
        raise AssertionError("the server did not start")

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill()


@pytest.fixture
async def proxy(server: Any) -> AsyncIterator[FaultProxy]:
    """A fault proxy on 127.0.0.1 in front of the test server (REST and WebSocket)."""
    async with FaultProxy(server.port) as p:
        yield p


@pytest.fixture
async def engines(tmp_path: Path, proxy: FaultProxy) -> AsyncIterator[EngineFactory]:
    """``await engines("alice")``: an open engine logged in *through the proxy*, LIVE."""
    made: list[SyncEngine] = []

    async def make(
        user: str, *, login: bool = True, wait_live: bool = True, **options: Any
    ) -> SyncEngine:
        engine = SyncEngine(tmp_path / f"{user}.db", **{**FAST, **options})
        await engine.open()
        made.append(engine)
        if login:
            await engine.login(proxy.url, user, f"{user}-password")
            if wait_live:
                assert await engine.wait_for_state(ConnectionState.LIVE, timeout=10 * TIME_FACTOR)
        return engine

    yield make
    for engine in made:
        await engine.close()


@pytest.fixture
async def server_process(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """The reference server as a subprocess (see :class:`ServerProcess`)."""
    srv = ServerProcess(tmp_path / "server-data")
    await srv.start()
    yield srv
    await srv.stop()
