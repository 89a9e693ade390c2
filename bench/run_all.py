"""Run every benchmark (``make bench``), or all of them at smoke sizes (``make bench-smoke``).

Each script runs in its own process, with a time limit; their ``BENCH`` lines are collected
and summarised in a Markdown table (the one docs/performance.md holds). ``--out FILE`` also
writes the BENCH records, one JSON object a line.

Exit status: 0 when every script ran (a figure that misses its target is reported, not an
error), 1 when one crashed or timed out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib as bl  # noqa: E402

#: In the order they run; each is bounded by its own sizes and by TIMEOUT_S here.
SCRIPTS = (
    "bench_catchup.py",
    "bench_cli_catchup.py",
    "bench_catchup_limits.py",
    "bench_live_apply.py",
    "bench_ephemeral.py",
    "bench_enqueue.py",
    "bench_flush.py",
    "bench_latency.py",
    "bench_history.py",
    "bench_memory.py",
    "bench_server.py",
    "bench_scaleout.py",
    "bench_matrix_catchup.py",
)
TIMEOUT_S = 120.0
#: Scripts that start services of their own (two PostgreSQL clusters, several nodes).
TIMEOUTS = {"bench_scaleout.py": 300.0}
SMOKE_TIMEOUT_S = 30.0


def run_script(name: str, smoke: bool) -> tuple[dict[str, Any] | None, str]:
    """Run one script; returns its BENCH record (None on failure) and an error text."""
    cmd = [sys.executable, str(HERE / name), *(["--smoke"] if smoke else [])]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=SMOKE_TIMEOUT_S if smoke else TIMEOUTS.get(name, TIMEOUT_S),
        )
    except subprocess.TimeoutExpired:
        return None, "timed out"
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    record = parse_bench(proc.stdout)
    if proc.returncode != 0 or record is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return None, f"exit {proc.returncode}\n{tail}"
    return record, ""


def parse_bench(stdout: str) -> dict[str, Any] | None:
    """The last ``BENCH {json}`` line of a script's output."""
    record = None
    for line in stdout.splitlines():
        if line.startswith("BENCH "):
            record = json.loads(line[len("BENCH ") :])
    return record


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


def table(records: list[dict[str, Any]]) -> str:
    """The Markdown table of the figures."""
    lines = [
        "| figure | engine | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    rows = [row for r in records for row in (r, *r.get("more", ()))]
    for r in rows:
        unit = r["unit"]
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['figure']} | {fmt(r['value'], unit)} | {fmt(r['baseline'], unit)} | "
            f"{ratio} | {r['target']} | {met} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not figures")
    parser.add_argument("--out", type=Path, help="also write the BENCH records here (JSONL)")
    parser.add_argument("only", nargs="*", help="run only these scripts (e.g. bench_flush.py)")
    args = parser.parse_args()
    scripts = [s for s in SCRIPTS if not args.only or s in args.only]
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    for name in scripts:
        print(f"--- {name}{' --smoke' if args.smoke else ''}", flush=True)
        record, error = run_script(name, args.smoke)
        if record is None:
            failures.append(f"{name}: {error}")
            print(f"FAILED {name}: {error}", flush=True)
        else:
            records.append(record)
    info = bl.machine()
    print()
    print(
        f"Machine: nproc {info['nproc']}, Python {info['python']}, SQLite {info['sqlite']}, "
        f"{info['platform']}; {time.perf_counter() - started:.0f} s"
    )
    print(table(records))
    if args.out:
        with args.out.open("w") as f:
            f.write(json.dumps({"machine": info}) + "\n")
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
