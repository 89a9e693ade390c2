"""A small status monitor: connection state and sync health as they change.

    syncengine serve
    python examples/status_monitor.py --user alice

Prints one line per connection-state change and a health line every ``--every`` seconds:
state, pending/sending/failed outbox counts, oldest pending age, cursor and open gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from syncengine import ConnectionStateChanged, SyncEngine


def health_line(h: object) -> str:
    age = getattr(h, "oldest_pending_age_s", None)
    return (
        f"health state={h.state.value} pending={h.pending} sending={h.sending} "  # type: ignore[attr-defined]
        f"failed={h.failed} oldest={'-' if age is None else f'{age:.1f}s'} "  # type: ignore[attr-defined]
        f"cursor={h.cursor} gaps={h.open_gaps} in_sync={h.in_sync}"  # type: ignore[attr-defined]
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description="Watch connection state and sync health.")
    parser.add_argument("--user", required=True)
    parser.add_argument(
        "--server", default=os.environ.get("SYNCENGINE_SERVER", "http://127.0.0.1:8765")
    )
    parser.add_argument("--password", default=os.environ.get("SYNCENGINE_PASSWORD", "secret"))
    parser.add_argument("--db", default=None)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between health lines")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after N seconds (0: never)"
    )
    args = parser.parse_args()

    async with SyncEngine(args.db or f"{args.user}.monitor.db") as engine:
        engine.on(
            ConnectionStateChanged,
            lambda e: print(f"state {e.old.value} -> {e.new.value} ({e.reason})", flush=True),
        )
        await engine.login(args.server, args.user, args.password)
        loop = asyncio.get_running_loop()
        end = loop.time() + args.duration if args.duration else None
        while end is None or loop.time() < end:
            print(health_line(await engine.health()), flush=True)
            await asyncio.sleep(args.every)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(asyncio.run(main()))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
