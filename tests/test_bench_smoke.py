"""Every benchmark still runs: each script at smoke sizes, as ``make bench-smoke`` runs it.

Nothing here asserts a speed: the figures live in docs/performance.md, measured by
``make bench``. This only checks that each script exits 0 and prints one parseable
``BENCH {json}`` line with the keys the summary needs.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


RUN_ALL = _load("run_all")
BENCHLIB = _load("benchlib")


def test_every_script_is_run_by_run_all() -> None:
    on_disk = sorted(p.name for p in BENCH.glob("bench_*.py"))
    assert sorted(RUN_ALL.SCRIPTS) == on_disk


@pytest.mark.timeout(90)
@pytest.mark.parametrize("script", RUN_ALL.SCRIPTS)
def test_script_runs_at_smoke_size(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    assert len(lines) == 1, proc.stdout
    record = json.loads(lines[0].removeprefix("BENCH "))
    missing = set(BENCHLIB.REQUIRED_KEYS) - record.keys()
    assert not missing, missing
    assert record["smoke"] is True
    assert record["name"] and isinstance(record["value"], int | float)
    assert record["met"] in (True, False, None)


def test_summary_table_lists_each_record() -> None:
    record = {
        "figure": "f",
        "unit": "events/s",
        "value": 1.0,
        "baseline": 2.0,
        "ratio": 0.5,
        "target": ">= 0.5",
        "met": True,
    }
    text = RUN_ALL.table([record, {**record, "baseline": None, "ratio": None, "met": None}])
    assert text.count("\n") == 3 and "| f |" in text
