"""Shared fixtures: a real reference server on 127.0.0.1 (port 0) and engines wired to it.

Seeds: every randomised test takes its seed from ``SYNCENGINE_SEED`` (or picks one) and
prints it, so a failure can be replayed with the same seed.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from syncengine import SyncEngine
from syncengine.models import ConnectionState

#: Engine settings that make reconnects fast enough for tests (production keeps defaults).
FAST = {
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.5,
    "heartbeat_interval_s": 0.5,
    "heartbeat_timeout_s": 1.0,
    "poll_interval_s": 0.3,
    "safety_pull_s": 2.0,
    "request_timeout_s": 5.0,
}


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("SYNCENGINE_SEED") or random.randrange(1 << 30))
    print(f"SYNCENGINE_SEED={value}")
    return value


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One PostgreSQL server for the session (``tests/services/postgres.py``); each test takes
    a fresh database from it with ``postgres.fresh()``. Skips where no binaries exist."""
    from tests.services import postgres as pg

    reason = pg.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's 0700 temp root: the server runs as the ``postgres`` user when root.
    base = Path(tempfile.mkdtemp(prefix="syncengine-pg-"))
    base.chmod(0o711)  # traversable by the ``postgres`` user, not listable
    try:
        with pg.postgres_server(base / "pg") as srv:
            yield pg.PostgresPool(srv)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Any]:
    """The reference server, in-process, on 127.0.0.1 with a free port."""
    from syncengine.server.testing import run_server

    async with run_server(tmp_path / "server") as srv:
        yield srv


EngineFactory = Callable[..., Awaitable[SyncEngine]]


@pytest.fixture
async def make_engine(tmp_path: Path, server: Any) -> AsyncIterator[EngineFactory]:
    """``await make_engine("alice")``: an open engine logged in to the test server, LIVE."""
    engines: list[SyncEngine] = []

    async def make(
        user: str, *, login: bool = True, wait_live: bool = True, **options: Any
    ) -> SyncEngine:
        settings = {**FAST, **options}
        engine = SyncEngine(tmp_path / f"{user}.db", **settings)
        await engine.open()
        engines.append(engine)
        if login:
            await engine.login(server.url, user, f"{user}-password")
            if wait_live and settings.get("connect", True):
                assert await engine.wait_for_state(ConnectionState.LIVE, timeout=10)
        return engine

    yield make
    for engine in engines:
        await engine.close()


@pytest.fixture(autouse=True)
def _quiet_libraries() -> None:
    for name in ("stamina", "websockets", "httpx", "httpcore", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
