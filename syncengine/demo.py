"""``syncengine demo``: two users chat live, one goes offline and comes back, and they converge.

Everything runs on embedded defaults: the reference server on its own thread
(:class:`~syncengine.server.testing.ServerThread`, 127.0.0.1, a free port), two stores in a
temporary folder, and two :class:`~syncengine.SyncEngine` instances (alice and bob) in
one asyncio program. The script:

1. both log in; alice creates a conversation with bob;
2. they chat live, each message preceded by a typing indicator; presence is shown;
3. bob goes offline (his engine is closed) and keeps writing: his messages are queued in his
   outbox; alice writes meanwhile;
4. bob comes back: his outbox is pushed, catch-up pulls what he missed;
5. the verdict: alice's store, bob's store and the server hold the same messages — compared
   as ``(message id, seq, sender, body)`` lists — each once, in the same order.

The exit status is 0 only when the verdict holds. Interactive terminals get a live view;
otherwise the story is printed as plain lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from syncengine import SyncEngine
from syncengine.models import ConnectionState

__all__ = ["DemoResult", "run_demo"]

#: Engine settings for a demo on loopback: quick reconnects and heartbeats.
_ENGINE: dict[str, Any] = {
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.5,
    "heartbeat_interval_s": 0.5,
    "heartbeat_timeout_s": 1.0,
    "safety_pull_s": 5.0,
    "request_timeout_s": 5.0,
}

_LINES = (
    "Hi! Are you around?",
    "Yes, just got in.",
    "Lunch at noon?",
    "Sure, the usual place?",
    "Works for me.",
    "I'll book a table.",
    "On the train now, signal is patchy.",
    "No rush, we'll wait.",
    "Did you see the release notes?",
    "Reading them now.",
    "The offline mode is great.",
    "Nothing got lost, nothing doubled.",
)

Key = tuple[str | None, int | None, str, str]


@attrs.define
class DemoResult:
    """What the demo measured.

    Attributes:
        ok: the verdict: both stores equal the server's messages, each once, same order.
        messages: messages the users wrote.
        on_server: messages the server holds for the conversation.
        duplicated: messages held more than once (by id) in any of the three lists.
        lost: messages written but missing on the server.
        converge_s: seconds from bob's reconnection to convergence.
        total_s: seconds the whole demo took.
        peak_pending: the most operations bob had queued while offline.
        stores: the two store paths.
    """

    ok: bool
    messages: int
    on_server: int
    duplicated: int
    lost: int
    converge_s: float | None
    total_s: float
    peak_pending: int
    stores: dict[str, Path]


# --- views ------------------------------------------------------------------------------------


class _PlainView:
    """One line per step, for logs and pipes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._t0 = time.monotonic()
        self._stream = stream

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._t0:5.2f}s] {text}", file=self._stream, flush=True)

    def chat(self, sender: str, body: str, note: str = "") -> None:
        self.say(f"  {sender}: {body}{f'  ({note})' if note else ''}")

    def refresh(self, demo: _Demo) -> None:
        del demo

    def close(self) -> None:
        pass


class _RichView(_PlainView):
    """A live two-pane view of both users' stores, with the story below it."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.live import Live

        self._console = Console(highlight=False)
        self._story: list[str] = []
        self._live = Live(console=self._console, refresh_per_second=12, transient=False)
        self._live.start()

    def say(self, text: str) -> None:
        self._story.append(f"[{time.monotonic() - self._t0:5.2f}s] {text}")
        del self._story[:-8]

    def chat(self, sender: str, body: str, note: str = "") -> None:
        del sender, body, note  # the panes show the messages themselves

    def refresh(self, demo: _Demo) -> None:
        from rich.columns import Columns
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        panes = [Panel(self._pane(demo, name), title=name, width=56) for name in ("alice", "bob")]
        story = Text("\n".join(self._story), style="dim")
        self._live.update(Group(Columns(panes), story))

    def _pane(self, demo: _Demo, name: str) -> Any:
        from rich.text import Text

        engine = demo.engines.get(name)
        text = Text()
        if engine is None or demo.conversation_id is None:
            text.append("offline (engine closed)\n" if engine is None else "starting…\n")
            return text
        store = engine.store
        health = store.health()
        state = engine.state.value if demo.connected.get(name) else "offline"
        colour = {"live": "green", "offline": "red"}.get(state, "yellow")
        text.append("state ", style="bold")
        text.append(state, style=colour)
        text.append(f"   pending {health.pending}\n", style="yellow" if health.pending else "")
        other = "bob" if name == "alice" else "alice"
        presence = store.presence(other)
        text.append(f"{other} is {presence.status.value if presence else 'unknown'}\n")
        for msg in store.messages(demo.conversation_id, limit=10):
            mark = " …" if msg.seq is None else ""
            text.append(f"{msg.sender}: ", style="bold")
            text.append(f"{msg.body}{mark}\n", style="yellow" if msg.seq is None else "")
        typing = store.typing(demo.conversation_id)
        if typing:
            text.append(f"{', '.join(t.user for t in typing)} is typing…\n", style="italic")
        return text

    def close(self) -> None:
        self._live.stop()  # the last frame stays on screen, story included


# --- the play ---------------------------------------------------------------------------------


@attrs.define
class _Demo:
    workdir: Path
    server_url: str
    view: _PlainView
    rng: random.Random
    engines: dict[str, SyncEngine] = attrs.field(factory=dict)
    connected: dict[str, bool] = attrs.field(factory=dict)
    conversation_id: str | None = None
    sent: int = 0
    peak_pending: int = 0
    line_no: int | None = None

    def db(self, name: str) -> Path:
        return self.workdir / f"{name}.db"

    async def open(self, name: str, *, connect: bool) -> SyncEngine:
        engine = SyncEngine(self.db(name), connect=connect, **_ENGINE)
        await engine.open()
        self.engines[name] = engine
        self.connected[name] = connect
        return engine

    async def close(self, name: str) -> None:
        engine = self.engines.pop(name, None)
        self.connected.pop(name, None)
        if engine is not None:
            await engine.close()

    async def close_all(self) -> None:
        for name in list(self.engines):
            await self.close(name)

    def line(self) -> str:
        # The lines are a dialogue: play them in order, from a random starting point.
        if self.line_no is None:
            self.line_no = self.rng.randrange(len(_LINES))
        self.line_no += 1
        return _LINES[self.line_no % len(_LINES)]

    async def say(self, name: str, body: str, *, typing: float) -> str:
        """``name`` types for ``typing`` seconds, then sends; returns the op id."""
        engine = self.engines[name]
        assert self.conversation_id is not None
        if typing > 0 and self.connected.get(name):
            await engine.set_typing(self.conversation_id, True)
            await asyncio.sleep(typing)
        message = await engine.send(self.conversation_id, body)
        if typing > 0 and self.connected.get(name):
            await engine.set_typing(self.conversation_id, False)
        self.sent += 1
        pending = engine.store.health().pending
        self.peak_pending = max(self.peak_pending, pending) if name == "bob" else self.peak_pending
        note = "" if self.connected.get(name) else f"queued, {pending} pending"
        self.view.chat(name, body, note)
        assert message.op_id is not None
        return message.op_id


async def _until(predicate: Any, timeout: float, what: str) -> None:
    """Wait until ``predicate()`` is true (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise _DemoFailed(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


class _DemoFailed(Exception):
    """A step did not happen in time."""


def _store_keys(engine: SyncEngine, cid: str, limit: int) -> list[Key]:
    return [(m.id, m.seq, m.sender, m.body) for m in engine.store.messages(cid, limit=limit)]


def _server_keys(server: Any, cid: str) -> list[Key]:
    return [
        (m["message_id"], m["seq"], m["sender"], m["body"]) for m in server.state.all_messages(cid)
    ]


async def _refresher(demo: _Demo) -> None:
    while True:
        with contextlib.suppress(Exception):  # a pane read racing a close is redrawn next tick
            demo.view.refresh(demo)
        await asyncio.sleep(0.08)


@attrs.frozen
class _Plan:
    """How many messages each act has, and the pace they are played at."""

    n_messages: int
    n_live: int
    n_bob_offline: int
    n_alice_offline: int
    typing: float
    gap: float


def _plan(n_messages: int, *, watched: bool) -> _Plan:
    n_live = max(2, n_messages // 3)
    n_bob_offline = max(1, (n_messages - n_live) // 2)
    # Pace: human-looking for small runs, quick for big ones (the whole demo stays short);
    # slower when someone watches the live view.
    slow = 2.5 if watched else 1.0
    return _Plan(
        n_messages=n_messages,
        n_live=n_live,
        n_bob_offline=n_bob_offline,
        n_alice_offline=n_messages - n_live - n_bob_offline,
        typing=min(0.25, 2.0 / n_messages) * slow,
        gap=min(0.08, 1.0 / n_messages) * slow,
    )


async def _play(demo: _Demo, server: Any, n_messages: int) -> DemoResult:
    started = time.monotonic()
    plan = _plan(n_messages, watched=isinstance(demo.view, _RichView))
    demo.view.say(f"reference server on {demo.server_url}; stores in {demo.workdir}")
    await _log_in(demo)
    cid = await _create_conversation(demo)
    await _live_chat(demo, cid, plan)
    await _bob_offline(demo, plan)
    converge_s = await _bob_back(demo, server, cid, plan)
    return _verdict(demo, server, cid, plan, converge_s, started)


async def _log_in(demo: _Demo) -> None:
    """Act 1: both log in, go live and online."""
    alice = await demo.open("alice", connect=True)
    bob = await demo.open("bob", connect=True)
    await alice.login(demo.server_url, "alice", "alice-demo-password", device="demo-laptop")
    await bob.login(demo.server_url, "bob", "bob-demo-password", device="demo-phone")
    for name, engine in (("alice", alice), ("bob", bob)):
        if not await engine.wait_for_state(ConnectionState.LIVE, timeout=10):
            raise _DemoFailed(f"{name} did not connect")
        await engine.set_presence("online")
    demo.view.say("alice and bob are logged in and live")


async def _create_conversation(demo: _Demo) -> str:
    """Alice creates the conversation; returns its id once bob has it too."""
    alice, bob = demo.engines["alice"], demo.engines["bob"]
    conv = await alice.create_conversation("Lunch plans", members=["bob"])
    demo.conversation_id = cid = conv.id
    await _until(lambda: bob.store.has_conversation(cid), 10, "bob to see the conversation")
    demo.view.say(f"alice created the conversation 'Lunch plans' with bob ({cid})")
    return cid


async def _live_chat(demo: _Demo, cid: str, plan: _Plan) -> None:
    """Act 2: turns of live chat, each message seen by the other side before the next."""
    demo.view.say(f"live chat: {plan.n_live} messages, with typing indicators")
    for i in range(plan.n_live):
        sender, receiver = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
        op_id = await demo.say(sender, demo.line(), typing=plan.typing)
        recv = demo.engines[receiver]
        send = demo.engines[sender]
        await _until(
            lambda op=op_id, s=send, r=recv: (
                (m := s.store.message_by_op(op)) is not None
                and m.id is not None
                and any(x.id == m.id for x in r.store.messages(cid, limit=5))
            ),
            10,
            f"{receiver} to receive a message",
        )


async def _bob_offline(demo: _Demo, plan: _Plan) -> None:
    """Act 3: bob's engine stops; he keeps writing into his outbox while alice writes too."""
    demo.view.say("bob goes offline (his engine stops) and keeps writing")
    await demo.close("bob")
    bob = await demo.open("bob", connect=False)
    alice = demo.engines["alice"]
    for i in range(max(plan.n_bob_offline, plan.n_alice_offline)):
        if i < plan.n_bob_offline:
            await demo.say("bob", demo.line(), typing=0)
        if i < plan.n_alice_offline:
            await demo.say("alice", demo.line(), typing=plan.typing / 2)
        await asyncio.sleep(plan.gap)
    await alice.wait_for_pending(timeout=10)
    await _until(
        lambda: (p := alice.store.presence("bob")) is not None and p.status.value == "offline",
        5,
        "alice to see bob offline",
    )
    demo.view.say(
        f"alice sees bob offline; bob has {bob.store.health().pending} messages queued, "
        f"alice's {plan.n_alice_offline} are on the server"
    )


async def _bob_back(demo: _Demo, server: Any, cid: str, plan: _Plan) -> float | None:
    """Act 4: bob reconnects; returns the seconds until all three agree (None: never)."""
    demo.view.say("bob is back: his outbox flushes, catch-up pulls what he missed")
    await demo.close("bob")
    reconnect = time.monotonic()
    bob = await demo.open("bob", connect=True)
    await bob.set_presence("online")
    alice = demo.engines["alice"]
    limit = plan.n_messages + 50
    try:
        await _until(
            lambda: (
                _store_keys(alice, cid, limit)
                == _store_keys(bob, cid, limit)
                == _server_keys(server, cid)
                and len(_server_keys(server, cid)) >= plan.n_messages
            ),
            30,
            "the stores to converge",
        )
    except _DemoFailed:
        return None
    return time.monotonic() - reconnect


def _verdict(
    demo: _Demo, server: Any, cid: str, plan: _Plan, converge_s: float | None, started: float
) -> DemoResult:
    """Compare both stores with the server: same messages, each once, same order."""
    limit = plan.n_messages + 50
    a, b, s = (
        _store_keys(demo.engines["alice"], cid, limit),
        _store_keys(demo.engines["bob"], cid, limit),
        _server_keys(server, cid),
    )
    duplicated = sum(len(keys) - len({k[0] for k in keys}) for keys in (a, b, s))
    lost = max(0, plan.n_messages - len(s))
    ok = (
        converge_s is not None
        and a == b == s
        and duplicated == 0
        and lost == 0
        and len(s) == plan.n_messages
        and all(k[0] is not None for k in a)
    )
    return DemoResult(
        ok=ok,
        messages=demo.sent,
        on_server=len(s),
        duplicated=duplicated,
        lost=lost,
        converge_s=converge_s,
        total_s=time.monotonic() - started,
        peak_pending=demo.peak_pending,
        stores={name: demo.db(name) for name in ("alice", "bob")},
    )


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Library warnings (a closed socket while bob goes offline) would tear the view."""
    names = ("syncengine", "websockets", "httpx", "httpcore", "uvicorn", "stamina")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def _main(demo: _Demo, server: Any, n_messages: int) -> DemoResult:
    refresher = asyncio.create_task(_refresher(demo))
    try:
        return await _play(demo, server, n_messages)
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        with contextlib.suppress(Exception):
            demo.view.refresh(demo)
        await demo.close_all()


def run_demo(
    *,
    n_messages: int = 24,
    keep: bool = False,
    seed: int | None = None,
    interactive: bool | None = None,
    as_json: bool = False,
) -> int:
    """Run the demo; returns the exit status (0 only when the verdict holds).

    Args:
        n_messages: messages written in all (at least 4).
        keep: keep the stores and print their ``--db`` paths.
        seed: seed of the message choices.
        interactive: force the live view on or off (default: when stdout is a terminal).
        as_json: print the result as one JSON document on stdout; the story and the verdict
            go to stderr as plain lines.
    """
    if interactive is None:
        interactive = sys.stdout.isatty() and not as_json
    workdir = Path(tempfile.mkdtemp(prefix="syncengine-demo-"))
    # The temporary folder holds both stores, their tokens and the server's database: it is
    # removed on every way out (unless --keep): success, failure, Ctrl-C, and a closed pipe
    # (``syncengine demo | head -3``).
    try:
        return _run_in(workdir, n_messages, keep, seed, interactive, as_json)
    except BrokenPipeError:
        _silence_stdout()
        return 141  # 128 + SIGPIPE: the reader went away, as a shell reports it
    finally:
        if keep:
            shutil.rmtree(workdir / "server", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _run_in(
    workdir: Path, n_messages: int, keep: bool, seed: int | None, interactive: bool, as_json: bool
) -> int:
    from syncengine.server.config import ServerConfig
    from syncengine.server.testing import ServerThread

    config = ServerConfig(
        data_dir=workdir / "server",
        host="127.0.0.1",
        port=0,
        # The demo shows bob's presence dropping: a short leave debounce, not the usual 10 s.
        presence_leave_s=0.5,
        shutdown_timeout_s=1.0,
    )
    result: DemoResult | None = None
    error: str | None = None
    interrupted = False
    with _quiet_logs():
        server = ServerThread(config).start()
        try:
            view: _PlainView = (
                _RichView() if interactive else _PlainView(sys.stderr if as_json else None)
            )
            demo = _Demo(workdir=workdir, server_url=server.url, view=view, rng=random.Random(seed))
            try:
                result = asyncio.run(_main(demo, server, n_messages))
            except _DemoFailed as exc:
                error = str(exc)
            except KeyboardInterrupt:
                error = "interrupted"
                interrupted = True
            finally:
                view.close()
        finally:
            server.stop()
    code = _report(result, error, keep=keep, as_json=as_json)
    return 130 if interrupted else code


def _report(
    result: DemoResult | None, error: str | None, *, keep: bool, as_json: bool = False
) -> int:
    out = sys.stderr if as_json else sys.stdout
    if result is None:
        print(f"verdict: FAILED - {error}", file=out, flush=True)
        if as_json:
            print(json.dumps({"ok": False, "error": error}), flush=True)
        return 1
    figures = (
        f"{result.messages} messages written, {result.on_server} on the server, "
        f"lost {result.lost}, duplicated {result.duplicated}, "
        f"bob's outbox peaked at {result.peak_pending}, "
        + (
            f"converged {result.converge_s:.2f} s after bob reconnected"
            if result.converge_s is not None
            else "did not converge"
        )
        + f", {result.total_s:.1f} s in all"
    )
    if result.ok:
        print(
            "verdict: CONVERGED - alice's store, bob's store and the server hold the same "
            f"{result.on_server} messages, each once, in the same order",
            file=out,
            flush=True,
        )
    else:
        print("verdict: DIVERGED - the stores do not match the server", file=out, flush=True)
    print(f"figures: {figures}", file=out, flush=True)
    if keep:
        for name, path in result.stores.items():
            print(
                f"kept {name}'s store: syncengine --db {path} conversations", file=out, flush=True
            )
    if as_json:
        doc = {
            "ok": result.ok,
            "messages": result.messages,
            "on_server": result.on_server,
            "lost": result.lost,
            "duplicated": result.duplicated,
            "converge_s": result.converge_s,
            "total_s": result.total_s,
            "peak_pending": result.peak_pending,
            "stores": {name: str(path) for name, path in result.stores.items()} if keep else None,
        }
        print(json.dumps(doc), flush=True)
    return 0 if result.ok else 1
