"""A plain (non-async) script using the blocking API.

Right after the quickstart (docs/quickstart.md: its server runs and
``SYNCENGINE_PASSWORD=alice-secret`` is exported), from the repository::

    .venv/bin/python examples/blocking_script.py --user alice --to bob "nightly build passed"

It logs in, finds (or creates) a conversation with the recipient, sends one message, waits
until the server acknowledged it, and prints the conversation's last messages. The password
is taken as ``syncengine login`` takes it: SYNCENGINE_PASSWORD, else a prompt, else stdin.
Any engine error is one line on stderr (exit 1).
"""

from __future__ import annotations

import argparse
import sys

from common import DEFAULT_SERVER, password, run

from syncengine import BlockingEngine


def main() -> int:
    parser = argparse.ArgumentParser(description="Send one message from a plain script.")
    parser.add_argument("text", help="the message")
    parser.add_argument("--user", default="alice", help="who sends it [default: alice]")
    parser.add_argument("--to", required=True, help="the recipient")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"[default: {DEFAULT_SERVER}]")
    parser.add_argument("--db", default=None, help="store file [default: USER.script.db]")
    args = parser.parse_args()

    secret = password(args.user)
    with BlockingEngine(args.db or f"{args.user}.script.db") as engine:
        engine.login(args.server, args.user, secret)
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
    run(main)
