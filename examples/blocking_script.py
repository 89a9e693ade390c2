"""A plain (non-async) script using the blocking API.

    syncengine serve
    python examples/blocking_script.py --user reporter --to alice "nightly build passed"

It logs in, finds (or creates) a conversation with the recipient, sends one message, waits
until the server acknowledged it, and prints the conversation's last messages.
"""

from __future__ import annotations

import argparse
import os
import sys

from syncengine import BlockingEngine


def main() -> int:
    parser = argparse.ArgumentParser(description="Send one message from a plain script.")
    parser.add_argument("text")
    parser.add_argument("--user", default="reporter")
    parser.add_argument("--to", required=True)
    parser.add_argument(
        "--server", default=os.environ.get("SYNCENGINE_SERVER", "http://127.0.0.1:8765")
    )
    parser.add_argument("--password", default=os.environ.get("SYNCENGINE_PASSWORD", "secret"))
    parser.add_argument("--db", default=None)
    args = parser.parse_args()

    with BlockingEngine(args.db or f"{args.user}.script.db") as engine:
        engine.login(args.server, args.user, args.password)
        engine.sync_once()  # learn the conversations that already exist
        wanted = {args.user, args.to}
        conv = next((c for c in engine.conversations() if set(c.members) == wanted), None)
        if conv is None:
            conv = engine.create_conversation(f"{args.user} → {args.to}", members=[args.to])
        engine.send(conv.id, args.text)
        if not engine.wait_for_pending(timeout=15):
            print("queued; the server did not acknowledge in time", file=sys.stderr)
            return 1
        for m in engine.messages(conv.id, limit=5).messages:
            print(f"#{m.seq} {m.sender}: {m.body}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
