"""A terminal chat client on the engine: two terminals chat live, offline-first.

Right after the quickstart (docs/quickstart.md), with its server still running, one client
per user in two terminals (each keeps its own store)::

    SYNCENGINE_PASSWORD=alice-secret .venv/bin/python examples/chat.py --user alice --with bob
    SYNCENGINE_PASSWORD=bob-secret .venv/bin/python examples/chat.py --user bob --with alice

Type a line and press Enter to send it; ``/who`` shows presence, ``/away`` and ``/back`` set
yours, ``/quit`` leaves. Stop the server and keep typing: lines are queued (shown with a
``…``) and delivered once it is back; what the other side sent meanwhile is caught up.
The password is taken as ``syncengine login`` takes it (SYNCENGINE_PASSWORD, else a prompt,
else the first line of stdin); any engine error is one line on stderr (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import uuid
from collections.abc import Callable

from common import DEFAULT_SERVER, password, run

from syncengine import (
    ConnectionStateChanged,
    MessageReceived,
    MessageSent,
    SyncEngine,
    SyncEngineError,
    TypingStarted,
    TypingStopped,
    UserPresenceChanged,
)

NAMESPACE = uuid.UUID("8b0b5c1e-3c55-4d8a-9d7e-5f0e1d6f2a10")


def conversation_id(users: list[str]) -> str:
    """The same id for the same set of people, so both sides find one conversation."""
    return str(uuid.uuid5(NAMESPACE, ",".join(sorted(users))))


def read_lines(queue: asyncio.Queue[str | None], loop: asyncio.AbstractEventLoop) -> None:
    """Feed stdin lines to the loop from a daemon thread (it must not keep the exit waiting)."""

    def run() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=run, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True, help="who you are")
    parser.add_argument("--with", dest="peer", required=True, help="the other user")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"[default: {DEFAULT_SERVER}]")
    parser.add_argument("--db", default=None, help="store file (default: <user>.chat.db)")
    args = parser.parse_args()
    return asyncio.run(chat(args, password(args.user)))


async def chat(args: argparse.Namespace, secret: str) -> int:
    """Log in, join (or create) the conversation with the peer, and chat until /quit."""
    me = args.user
    cid = conversation_id([me, args.peer])
    out = lambda text: print(text, flush=True)  # noqa: E731 - one-line printer
    async with SyncEngine(args.db or f"{me}.chat.db") as engine:
        await engine.login(args.server, me, secret)
        engine.on(ConnectionStateChanged, lambda e: out(f"* connection: {e.new.value}"))
        engine.on(
            MessageReceived,
            # Your own lines are shown once, when typed (with "…" until delivered).
            lambda e: (
                out(f"[{e.sender}] {e.body}")
                if e.conversation_id == cid and e.sender != me
                else None
            ),
        )
        engine.on(MessageSent, lambda e: out(f"  ✓ delivered (#{e.seq})"))
        engine.on(TypingStarted, lambda e: out(f"* {e.user} is typing…"))
        engine.on(TypingStopped, lambda e: None)
        engine.on(UserPresenceChanged, lambda e: out(f"* {e.user} is {e.status}"))

        # Give the first catch-up a moment: if the peer already created it, use theirs.
        for _ in range(20):
            if engine.store.has_conversation(cid):
                break
            await asyncio.sleep(0.1)
        if not engine.store.has_conversation(cid):
            await engine.create_conversation(
                f"{me} & {args.peer}", members=[args.peer], conversation_id=cid
            )
        for m in (await engine.messages(cid, limit=20)).messages:
            out(f"[{m.sender}] {m.body}")
        out(f"* chatting with {args.peer} as {me}; /quit to leave")

        lines: asyncio.Queue[str | None] = asyncio.Queue()
        read_lines(lines, asyncio.get_running_loop())
        while True:
            line = await lines.get()
            if line is None or line == "/quit":
                break
            try:
                await handle(engine, line, cid, args.peer, me, out)
            except SyncEngineError as exc:
                out(f"* error: {' '.join(str(exc).split())}")
        # Leave nothing behind unsent if the server is reachable.
        await engine.wait_for_pending(timeout=5)
    return 0


async def handle(
    engine: SyncEngine, line: str, cid: str, peer: str, me: str, out: Callable[[str], None]
) -> None:
    """One typed line: a command, a message, or (empty) a typing notice."""
    if line == "/who":
        p = await engine.presence(peer)
        out(f"* {peer}: {p.status.value if p else 'unknown'}")
    elif line in ("/away", "/back"):
        await engine.set_presence("away" if line == "/away" else "online")
    elif line.strip():
        await engine.set_typing(cid, False)
        echo = await engine.send(cid, line)
        out(f"[{me}] {echo.body} …")
    else:
        await engine.set_typing(cid, True)


if __name__ == "__main__":
    run(main)
