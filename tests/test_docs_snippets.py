"""The code blocks of the embedding guide run, as written, against a test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "embedding.md"
DOC_URL = "http://127.0.0.1:8765"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_guide_has_runnable_blocks() -> None:
    blocks = python_blocks(GUIDE)
    assert len(blocks) >= 6
    assert all(DOC_URL in b for b in blocks), "each block talks to the documented server URL"


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    data = tmp_path_factory.mktemp("docserver")
    with ServerThread(ServerConfig(data_dir=data, **TEST_DEFAULTS)) as srv:
        yield srv


@pytest.mark.integration
@pytest.mark.parametrize("index", range(len(python_blocks(GUIDE))))
def test_guide_block_runs(
    index: int, doc_server: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # All blocks share one working folder, in order, like a reader following the guide.
    work = tmp_path_factory.getbasetemp() / "guide-cwd"
    work.mkdir(exist_ok=True)
    code = python_blocks(GUIDE)[index].replace(DOC_URL, doc_server.url)  # type: ignore[attr-defined]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, f"block {index} failed:\n{code}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), "each block prints what it shows"
