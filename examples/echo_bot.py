"""A bot that answers messages through event callbacks.

Right after the quickstart (docs/quickstart.md), with its server still running::

    SYNCENGINE_PASSWORD=echobot-secret .venv/bin/python examples/echo_bot.py --user echobot

then, in the quickstart's terminal (``create`` prints the new conversation's id)::

    .venv/bin/syncengine --db alice.db create Echo --member echobot
    .venv/bin/syncengine --db alice.db send CONV_ID ping
    .venv/bin/syncengine --db alice.db sync && .venv/bin/syncengine --db alice.db messages CONV_ID

Anyone who adds ``echobot`` to a conversation gets every message echoed back in upper case.
The bot is offline-first like any client: stop the server and its replies queue up. The
password is taken as ``syncengine login`` takes it (SYNCENGINE_PASSWORD, a prompt, stdin);
any engine error is one line on stderr (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio

from common import DEFAULT_SERVER, password, run

from syncengine import MessageReceived, SyncEngine


def main() -> int:
    parser = argparse.ArgumentParser(description="An echo bot on syncengine.")
    parser.add_argument("--user", default="echobot", help="the bot's user [default: echobot]")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"[default: {DEFAULT_SERVER}]")
    parser.add_argument("--db", default=None, help="store file [default: USER.bot.db]")
    parser.add_argument(
        "--max-replies", type=int, default=0, help="stop after N replies (0: run forever)"
    )
    args = parser.parse_args()
    return asyncio.run(serve(args, password(args.user)))


async def serve(args: argparse.Namespace, secret: str) -> int:
    """Log the bot in and answer until ``--max-replies`` (or forever)."""
    done = asyncio.Event()
    replies = 0
    async with SyncEngine(args.db or f"{args.user}.bot.db") as bot:
        await bot.login(args.server, args.user, secret)

        async def answer(event: MessageReceived) -> None:
            nonlocal replies
            if event.sender == args.user:
                return  # never answer ourselves
            await bot.send(event.conversation_id, event.body.upper())
            await bot.mark_read(event.conversation_id, event.seq)
            replies += 1
            print(f"answered {event.sender}: {event.body!r}", flush=True)
            if args.max_replies and replies >= args.max_replies:
                done.set()

        bot.on(MessageReceived, answer)
        print(f"{args.user} is listening", flush=True)
        await done.wait()
        await bot.wait_for_pending(timeout=10)
    return 0


if __name__ == "__main__":
    run(main)
