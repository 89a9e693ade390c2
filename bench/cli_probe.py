"""Run the ``syncengine`` command line with timers around its catch-up (for the profile).

    SPAWN_MONOTONIC=<parent's time.monotonic() at spawn> \\
        python bench/cli_probe.py OUT.json --db DB sync

Wraps, in this process only (no product code changes): the event loop's ``select`` (idle
time of the loop thread), ``RestTransport._request`` and ``pull`` (in-flight intervals),
``wire.decode_page``, ``Store.apply_events`` (wall and thread CPU, on which thread),
``Store.cursor`` (the progress ticker's read, when called on the loop thread),
``Exchange.emit_new`` and ``Exchange.catch_up``. Marks: interpreter ready, ``syncengine
.cli`` imported, first request, first pull, catch-up end, exit. Writes them to OUT.json at exit.
The wrappers cost about 1 µs per call; the loop's ``select`` runs a few times per page.

Experiments, by environment variable: ``PROBE_APPLY_ON_LOOP=1`` (apply every page on the loop
thread), ``PROBE_NO_TICKER=1`` (no progress ticker), ``PROBE_SWITCH_INTERVAL=S`` (the GIL's
switch interval).
"""

from __future__ import annotations

import time

T_START = time.monotonic()

import atexit  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import selectors  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

OUT = sys.argv[1]
MAIN = threading.main_thread()
marks: dict[str, float] = {"start": T_START}
spawn = os.environ.get("SPAWN_MONOTONIC")
if spawn:
    marks["spawn"] = float(spawn)
idle: list[tuple[float, float]] = []  # the loop thread blocked in select()
pulls: list[tuple[float, float]] = []
requests: list[tuple[float, float, str]] = []
applies: list[dict[str, Any]] = []
decodes: list[tuple[float, float, int]] = []
cursor_reads: list[tuple[float, float]] = []
emits: list[float] = []
spans: list[tuple[str, float, float]] = []  # named calls before and around the catch-up

_select = selectors.EpollSelector.select


def _timed_select(self: Any, timeout: float | None = None) -> Any:
    if threading.current_thread() is not MAIN:
        return _select(self, timeout)
    t = time.monotonic()
    try:
        return _select(self, timeout)
    finally:
        idle.append((t, time.monotonic()))


selectors.EpollSelector.select = _timed_select  # type: ignore[method-assign]


def _dump() -> None:
    marks["exit"] = time.monotonic()
    doc = {
        "cpu": time.process_time(),
        "marks": marks,
        "idle": idle,
        "pulls": pulls,
        "requests": requests,
        "applies": applies,
        "decodes": decodes,
        "cursor_reads": cursor_reads,
        "emits": emits,
        "spans": spans,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f)
    # What the interpreter still does after this (thread joins, teardown) the parent sees.
    with open(OUT + ".end", "w") as f:
        f.write(repr(time.monotonic()))


atexit.register(_dump)

import syncengine.cli as cli  # noqa: E402

marks["imported_cli"] = time.monotonic()

from syncengine.client import catchup as catchup_mod  # noqa: E402
from syncengine.client import exchange as exchange_mod  # noqa: E402
from syncengine.client import session as session_mod  # noqa: E402
from syncengine.client.engine import SyncEngine  # noqa: E402
from syncengine.local import sync as local_sync  # noqa: E402
from syncengine.store import store as store_mod  # noqa: E402
from syncengine.transport import rest  # noqa: E402

marks["imported_engine"] = time.monotonic()

_request = rest.RestTransport._request
_pull = rest.RestTransport.pull


async def _timed_request(self: Any, method: str, path: str, **kw: Any) -> Any:
    t = time.monotonic()
    marks.setdefault("first_request", t)
    try:
        return await _request(self, method, path, **kw)
    finally:
        requests.append((t, time.monotonic(), path))


async def _timed_pull(self: Any, since: int, limit: int) -> Any:
    t = time.monotonic()
    marks.setdefault("first_pull", t)
    try:
        return await _pull(self, since, limit)
    finally:
        pulls.append((t, time.monotonic()))


rest.RestTransport._request = _timed_request  # type: ignore[method-assign]
rest.RestTransport.pull = _timed_pull  # type: ignore[method-assign]

_decode_page = rest.wire.decode_page


def _timed_decode(data: Any, **kw: Any) -> Any:
    t = time.monotonic()
    page = _decode_page(data, **kw)
    decodes.append((t, time.monotonic(), len(page.events)))
    return page


rest.wire.decode_page = _timed_decode

_apply = store_mod.Store.apply_events


def _timed_apply(self: Any, events: Any, **kw: Any) -> Any:
    t, c = time.monotonic(), time.thread_time()
    try:
        return _apply(self, events, **kw)
    finally:
        applies.append(
            {
                "t0": t,
                "t1": time.monotonic(),
                "cpu": time.thread_time() - c,
                "n": len(events),
                "loop_thread": threading.current_thread() is MAIN,
            }
        )


store_mod.Store.apply_events = _timed_apply  # type: ignore[method-assign]

_cursor = store_mod.Store.cursor


def _timed_cursor(self: Any) -> int:
    if threading.current_thread() is not MAIN:
        return _cursor(self)
    t = time.monotonic()
    try:
        return _cursor(self)
    finally:
        cursor_reads.append((t, time.monotonic()))


store_mod.Store.cursor = _timed_cursor  # type: ignore[method-assign]

_emit_new = exchange_mod.Exchange.emit_new


def _timed_emit_new(self: Any, events: Any) -> None:
    t = time.monotonic()
    try:
        _emit_new(self, events)
    finally:
        emits.append(time.monotonic() - t)


exchange_mod.Exchange.emit_new = _timed_emit_new  # type: ignore[method-assign]

_catch_up = exchange_mod.Exchange.catch_up


async def _timed_catch_up(self: Any) -> int:
    marks.setdefault("catch_up_start", time.monotonic())
    try:
        return await _catch_up(self)
    finally:
        marks["catch_up_end"] = time.monotonic()


exchange_mod.Exchange.catch_up = _timed_catch_up  # type: ignore[method-assign]


def _span(owner: Any, attr: str, name: str) -> None:
    """Record every call of ``owner.attr`` (sync or async) as a named span."""
    import functools
    import inspect

    func = getattr(owner, attr)
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def awrapper(*args: Any, **kw: Any) -> Any:
            t = time.monotonic()
            try:
                return await func(*args, **kw)
            finally:
                spans.append((name, t, time.monotonic()))

        setattr(owner, attr, awrapper)
    else:

        @functools.wraps(func)
        def wrapper(*args: Any, **kw: Any) -> Any:
            t = time.monotonic()
            try:
                return func(*args, **kw)
            finally:
                spans.append((name, t, time.monotonic()))

        setattr(owner, attr, wrapper)


from syncengine import daemon as daemon_mod  # noqa: E402
from syncengine.transport import live as live_mod  # noqa: E402

marks["imported_daemon"] = time.monotonic()
_span(store_mod.Store, "__init__", "Store() open")
_span(store_mod.Store, "integrity_check", "Store.integrity_check")
_span(store_mod.Store, "health", "Store.health")
_span(store_mod.Store, "conversations", "Store.conversations")
_span(store_mod.Store, "recover_sending", "Store.recover_sending")
_span(SyncEngine, "open", "SyncEngine.open")
_span(SyncEngine, "close", "SyncEngine.close")
_span(exchange_mod.Exchange, "push_all", "Exchange.push_all")
_span(session_mod, "refresh_presence", "session.refresh_presence")
_span(live_mod.WebSocketLink, "connect", "WebSocketLink.connect")
_span(daemon_mod.StoreLock, "acquire", "StoreLock.acquire")
_span(daemon_mod.Daemon, "_check_store", "Daemon._check_store")
_span(daemon_mod.Daemon, "_start_scheduler", "Daemon._start_scheduler")
_span(local_sync, "server_head", "local.sync.server_head")

# Experiments (this process only), for the profile's "variants" section:
if os.environ.get("PROBE_APPLY_ON_LOOP"):  # every page applied on the loop thread
    catchup_mod.THREAD_APPLY_MIN = 10**9
if os.environ.get("PROBE_NO_TICKER"):  # no progress ticker (no store reads from the loop)

    async def _no_tick(engine: Any, on_progress: Any) -> None:
        return None

    local_sync._tick = _no_tick  # type: ignore[assignment]
if os.environ.get("PROBE_SWITCH_INTERVAL"):  # the GIL's switch interval (default 5 ms)
    sys.setswitchinterval(float(os.environ["PROBE_SWITCH_INTERVAL"]))

if __name__ == "__main__":
    sys.argv = ["syncengine", *sys.argv[2:]]
    cli.main()
