"""``syncengine demo``: the README's main command runs, converges, and cleans up after itself."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from syncengine import demo
from tests.test_cli import invoke, one_json, run_cli

pytestmark = pytest.mark.integration


def test_demo_as_a_subprocess_converges_and_keeps_the_stores() -> None:
    result = run_cli("demo", "--messages", "12", "--keep", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("verdict:")]
    assert verdicts == [
        "verdict: CONVERGED - alice's store, bob's store and the server hold the same 12 "
        "messages, each once, in the same order"
    ]
    figures = re.search(
        r"figures: 12 messages written, 12 on the server, lost 0, duplicated 0, .*"
        r"converged ([0-9.]+) s after bob reconnected, ([0-9.]+) s in all",
        result.stdout,
    )
    assert figures is not None, result.stdout
    assert float(figures.group(2)) < 30
    # The story shows bob queueing while offline.
    assert re.search(r"bob: .*\(queued, [0-9]+ pending\)", result.stdout)

    kept = dict(re.findall(r"kept (\w+)'s store: syncengine --db (\S+)", result.stdout))
    assert set(kept) == {"alice", "bob"}
    try:
        for name, db in kept.items():
            convs = one_json(invoke("--db", db, "--json", "conversations"))
            assert [c["title"] for c in convs] == ["Lunch plans"]
            msgs = one_json(invoke("--db", db, "--json", "messages", convs[0]["id"]))
            assert len(msgs) == 12 and all(m["state"] == "sent" for m in msgs), name
    finally:
        folder = Path(next(iter(kept.values()))).parent
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_demo_in_process_leaves_no_thread_and_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo.tempfile, "tempdir", str(tmp_path))
    before = set(threading.enumerate())
    assert demo.run_demo(n_messages=6, interactive=False, as_json=True) == 0
    captured = capsys.readouterr()
    # With --json: one JSON document on stdout, the story and the verdict on stderr.
    doc = json.loads(captured.out)
    assert doc["ok"] is True and doc["messages"] == doc["on_server"] == 6
    assert (doc["lost"], doc["duplicated"], doc["stores"]) == (0, 0, None)
    assert "verdict: CONVERGED" in captured.err
    assert set(threading.enumerate()) <= before
    assert list(tmp_path.iterdir()) == []


def test_a_divergence_is_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    bad = demo.DemoResult(
        ok=False,
        messages=12,
        on_server=11,
        duplicated=0,
        lost=1,
        converge_s=None,
        total_s=3.0,
        peak_pending=4,
        stores={},
    )
    assert demo._report(bad, None, keep=False) == 1
    out = capsys.readouterr().out
    assert "verdict: DIVERGED" in out and "lost 1" in out and "did not converge" in out
    assert demo._report(None, "timed out", keep=False) == 1
    assert "verdict: FAILED - timed out" in capsys.readouterr().out
