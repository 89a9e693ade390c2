"""A small status monitor: connection state and sync health as they change.

Right after the quickstart (docs/quickstart.md: its server runs and
``SYNCENGINE_PASSWORD=alice-secret`` is exported)::

    .venv/bin/python examples/status_monitor.py --user alice

Prints one line per connection-state change and a health line every ``--every`` seconds:
state, pending/sending/failed outbox counts, oldest pending age, cursor and open gaps. The
password is taken as ``syncengine login`` takes it (SYNCENGINE_PASSWORD, a prompt, stdin);
any engine error is one line on stderr (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio

from common import DEFAULT_SERVER, password, run

from syncengine import ConnectionStateChanged, SyncEngine


def health_line(h: object) -> str:
    age = getattr(h, "oldest_pending_age_s", None)
    return (
        f"health state={h.state.value} pending={h.pending} sending={h.sending} "  # type: ignore[attr-defined]
        f"failed={h.failed} oldest={'-' if age is None else f'{age:.1f}s'} "  # type: ignore[attr-defined]
        f"cursor={h.cursor} gaps={h.open_gaps} in_sync={h.in_sync}"  # type: ignore[attr-defined]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Watch connection state and sync health.")
    parser.add_argument("--user", required=True, help="whose store to watch")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"[default: {DEFAULT_SERVER}]")
    parser.add_argument("--db", default=None, help="store file [default: USER.monitor.db]")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between health lines")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after N seconds (0: never)"
    )
    args = parser.parse_args()
    return asyncio.run(watch(args, password(args.user)))


async def watch(args: argparse.Namespace, secret: str) -> int:
    """Print state changes and health lines until ``--duration`` (or forever)."""
    async with SyncEngine(args.db or f"{args.user}.monitor.db") as engine:
        engine.on(
            ConnectionStateChanged,
            lambda e: print(f"state {e.old.value} -> {e.new.value} ({e.reason})", flush=True),
        )
        await engine.login(args.server, args.user, secret)
        loop = asyncio.get_running_loop()
        end = loop.time() + args.duration if args.duration else None
        while end is None or loop.time() < end:
            print(health_line(await engine.health()), flush=True)
            await asyncio.sleep(args.every)
    return 0


if __name__ == "__main__":
    run(main)
