"""BlockingEngine shuts down cleanly: no "Task was destroyed but it is pending!" at exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread

pytestmark = pytest.mark.integration

#: The snippet of syncengine/blocking.py's docstring (and docs/embedding.md), as a script.
SCRIPT = textwrap.dedent(
    """
    import sys
    from syncengine import BlockingEngine

    url, db = sys.argv[1], sys.argv[2]
    with BlockingEngine(db) as engine:
        engine.login(url, "alice", "secret")
        engine.sync_once()
        conv = engine.create_conversation("Lunch", members=["bob"])
        engine.send(conv.id, "Noon?")
        assert engine.wait_for_pending(timeout=10)
        engine.messages(conv.id, limit=5)
    print("done")
    """
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with ServerThread(
        ServerConfig(data_dir=tmp_path_factory.mktemp("srv"), **TEST_DEFAULTS)
    ) as server:
        yield server


@pytest.mark.parametrize("run", [1, 2])
def test_blocking_engine_exits_without_pending_task_warning(
    tmp_path: Path, srv: Any, run: int
) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-X", "dev", str(script), srv.url, str(tmp_path / "alice.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    assert "Task was destroyed" not in done.stderr, done.stderr
    assert "was never awaited" not in done.stderr, done.stderr


def test_blocking_engine_open_failure_leaves_no_pending_task(tmp_path: Path) -> None:
    """Opening on an unusable path fails with a typed error and still shuts down cleanly."""
    script = tmp_path / "fail.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from syncengine import BlockingEngine, SyncEngineError
            try:
                with BlockingEngine(sys.argv[1]) as engine:
                    engine.login("http://127.0.0.1:1", "alice", "secret")
            except SyncEngineError as exc:
                print(type(exc).__name__)
            """
        ),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "a.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ServerUnavailable"
    assert "Task was destroyed" not in done.stderr, done.stderr
