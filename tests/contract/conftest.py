"""Fixtures of the contract suite: a server, a fault proxy in front of it, engines behind it.

The ``seed`` fixture (from ``tests/conftest.py``) reads ``SYNCENGINE_SEED`` and prints it;
scenarios derive every random choice from it. The soak tier (``SYNCENGINE_SOAK=1``) runs the
same code about 40x larger (see :func:`tests.contract.oracle.scale`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from syncengine import SyncEngine
from syncengine.models import ConnectionState
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR
from tests.contract.proxy import FaultProxy

#: Every contract scenario uses sockets on 127.0.0.1.
pytestmark = pytest.mark.integration

EngineFactory = Callable[..., Awaitable[SyncEngine]]


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
