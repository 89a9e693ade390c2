"""A bot that answers messages through event callbacks.

    syncengine serve
    python examples/echo_bot.py --user echobot

Anyone who adds ``echobot`` to a conversation gets every message echoed back in upper case.
The bot is offline-first like any client: stop the server and its replies queue up.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from syncengine import MessageReceived, SyncEngine


async def main() -> int:
    parser = argparse.ArgumentParser(description="An echo bot on syncengine.")
    parser.add_argument("--user", default="echobot")
    parser.add_argument(
        "--server", default=os.environ.get("SYNCENGINE_SERVER", "http://127.0.0.1:8765")
    )
    parser.add_argument("--password", default=os.environ.get("SYNCENGINE_PASSWORD", "secret"))
    parser.add_argument("--db", default=None)
    parser.add_argument(
        "--max-replies", type=int, default=0, help="stop after N replies (0: run forever)"
    )
    args = parser.parse_args()

    done = asyncio.Event()
    replies = 0
    async with SyncEngine(args.db or f"{args.user}.bot.db") as bot:
        await bot.login(args.server, args.user, args.password)

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
    try:
        raise SystemExit(asyncio.run(main()))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
