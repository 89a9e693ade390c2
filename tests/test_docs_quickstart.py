"""The CLI session in docs/quickstart.md runs, as written, against a test server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "quickstart.md"


def session_lines() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


@pytest.mark.integration
def test_quickstart_session_runs(tmp_path: Path) -> None:
    lines = session_lines()
    assert len(lines) >= 8
    with ServerThread(ServerConfig(data_dir=tmp_path / "srv", **TEST_DEFAULTS)) as srv:
        bindir = str(Path(sys.executable).parent) + "/"
        fixed = [
            line.replace("http://127.0.0.1:8765", srv.url).replace(".venv/bin/", bindir)
            for line in lines
        ]
        work = tmp_path / "cwd"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "SYNCENGINE_DB"}

        def run(script: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )

        session = run("\n".join(fixed[:-1]))
        last = run(fixed[-1])
    assert session.returncode == 0, session.stderr[-3000:]
    assert "Noon at the usual place?" in session.stdout  # bob's messages show alice's line
    assert "Traceback" not in session.stderr + last.stderr
    assert last.returncode == 0, last.stderr
    status = json.loads(last.stdout)
    assert status["user"] == "bob" and status["outbox"]["pending"] == 0
