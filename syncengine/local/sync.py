"""Sync a store from a process that is not its daemon, without ever racing the daemon.

One process syncs a store at a time (G6). :func:`sync_store` takes the store's lock and syncs
here when it is free; when a daemon holds it, it waits for the daemon to push everything
instead (:func:`wait_for_daemon`). :func:`sync_locked` is the one push + catch-up round
for a caller that already holds the lock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from syncengine import SyncEngine
from syncengine.client.progress import SyncCounters, counters
from syncengine.client.progress import server_head as progress_head
from syncengine.core.policy import rate_limit_wait
from syncengine.errors import (
    NotSynced,
    RateLimited,
    StoreLockHeld,
    SyncEngineError,
    TransportError,
)
from syncengine.events import SyncCompleted
from syncengine.local.account import (
    engine_options,
    open_store,
    require_login,
    require_writable,
)
from syncengine.local.lock import StoreLock
from syncengine.models import ConnectionState
from syncengine.store import Store

__all__ = [
    "SyncOutcome",
    "SyncProgress",
    "server_head",
    "sync_here",
    "sync_locked",
    "sync_store",
    "wait_for_daemon",
]

#: States in which a daemon cannot push now: waiting for it would only run out the clock.
_STALLED = (ConnectionState.BACKOFF, ConnectionState.FAILED, ConnectionState.OFFLINE)


@attrs.frozen(kw_only=True)
class SyncOutcome:
    """What a sync by this process, or by the daemon it waited for, left in the store.

    Attributes:
        pushed: operations pushed (None when the daemon did it).
        pulled: events pulled (None when the daemon did it).
        cursor: the stream position reached (an opaque token on a Matrix homeserver).
        pending: operations still waiting to be pushed.
        failed: operations the server refused for good.
        daemon: True when the daemon synced and this process only waited.
    """

    pushed: int | None
    pulled: int | None
    cursor: int | str
    pending: int
    failed: int
    daemon: bool


@attrs.frozen(kw_only=True)
class SyncProgress:
    """How far a sync has come, in stream positions.

    Attributes:
        to_push: operations queued when the sync started.
        total: positions to cover (the backlog up to the server's head plus about one per
            operation pushed), or None when the head is unknown.
        done: positions covered so far.
    """

    to_push: int
    total: int | None
    done: int


async def sync_store(
    db: str | os.PathLike[str],
    timeout: float,
    *,
    progress: Callable[[SyncProgress], None] | None = None,
) -> SyncOutcome:
    """Push the outbox and pull until caught up; defer to the daemon when one runs.

    Raises:
        NotLoggedIn: no store, no account or no token.
        NotSynced: the server (or the daemon) did not finish in time; work stays queued.
        AuthFailed: the server refused the token.
    """
    with open_store(db) as store:
        require_login(store, db)
    require_writable(db)
    lock = StoreLock(db)
    try:
        lock.acquire(timeout=0)
    except StoreLockHeld as exc:
        return await wait_for_daemon(db, timeout, exc.pid)
    try:
        return await sync_here(db, timeout, progress=progress)
    finally:
        lock.release()


async def sync_here(
    db: str | os.PathLike[str],
    timeout: float,
    *,
    progress: Callable[[SyncProgress], None] | None = None,
) -> SyncOutcome:
    """One sync by this process, reporting progress; the caller holds the store's lock."""
    with Store(db) as store:
        start = store.health()
    sized: list[int | None] = []
    # A Matrix cursor is an opaque token: no head to measure the backlog against.
    ordered = isinstance(start.cursor, int)

    def report(head: int | None, now: SyncCounters) -> None:
        if not sized:
            # Measured in stream positions: the backlog up to the head, plus about one event
            # per operation pushed (each becomes an event that the catch-up pulls back).
            known = head is not None and ordered
            sized.append(max(1, int(head) - int(start.cursor) + start.pending) if known else None)
        total = sized[0]
        both = isinstance(now.cursor, int) and ordered
        done = max(0, now.cursor - int(start.cursor)) if both else now.pulled
        done = min(done, total) if total is not None else done
        if progress is not None:
            progress(SyncProgress(to_push=start.pending, total=total, done=done))

    done = await sync_locked(db, timeout, on_progress=report if progress else None)
    with Store(db) as store:
        health = store.health()
    return SyncOutcome(
        pushed=done.pushed,
        pulled=done.pulled,
        cursor=done.cursor,
        pending=health.pending,
        failed=health.failed,
        daemon=False,
    )


async def sync_locked(
    db: str | os.PathLike[str],
    timeout: float,
    *,
    what: str = "queued work",
    on_progress: Callable[[int | None, SyncCounters], None] | None = None,
) -> SyncCompleted:
    """One push + catch-up by a non-connected engine; the caller holds the store lock.

    A ``429`` whose pause fits in ``timeout`` is waited out and the round goes on from the
    committed cursor; the result counts the work of every attempt.

    Args:
        db: the store.
        timeout: seconds for the whole round.
        what: names the work in the error message ("operation X").
        on_progress: called every 0.1 s while it syncs with the server's head (None when
            unknown) and the engine's in-memory counters; it never reads the store.

    Raises:
        NotSynced: the server could not be reached in time (queued work stays queued).
    """
    with Store(db) as store:
        require_login(store, db)
        options = engine_options(store)
        # The caller holds the single-writer lock: a SENDING row was left by a process that
        # died mid-push; replay it now rather than after its lease runs out.
        store.recover_sending()
    engine = SyncEngine(db, connect=False, request_timeout_s=min(10.0, timeout), **options)
    async with engine:
        ticker = None
        if on_progress is not None:
            ticker = asyncio.create_task(_tick(engine, on_progress))
        try:
            async with asyncio.timeout(timeout):
                return await _sync_waiting_out_429(engine, time.monotonic() + timeout)
        except TimeoutError as exc:
            raise NotSynced(f"timed out after {timeout:g} s; {what} stays queued") from exc
        except TransportError as exc:
            raise NotSynced(f"{_one_line(exc)}; {what} stays queued") from exc
        finally:
            if ticker is not None:
                ticker.cancel()


async def _sync_waiting_out_429(engine: SyncEngine, deadline: float) -> SyncCompleted:
    """``engine.sync_once()``, again after each 429 whose pause fits before ``deadline``."""
    while True:
        try:
            done = await engine.sync_once()
        except RateLimited as exc:
            wait = rate_limit_wait(exc.retry_after, deadline - time.monotonic())
            if wait is None:
                raise
            await asyncio.sleep(wait)
            continue
        total = counters(engine)
        return attrs.evolve(done, pushed=total.pushed, pulled=total.pulled)


async def _tick(
    engine: SyncEngine, on_progress: Callable[[int | None, SyncCounters], None]
) -> None:
    head = await progress_head(engine)
    while True:
        on_progress(head, counters(engine))
        await asyncio.sleep(0.1)


async def server_head(server: str, options: dict[str, Any]) -> int | None:
    """The server's stream head, to size a progress bar (None if unknown or unreachable)."""
    from syncengine.transport.base import make_ssl_context
    from syncengine.transport.rest import RestTransport

    try:
        ctx = make_ssl_context(options.get("ca_file")) if server.startswith("https") else None
        transport = RestTransport(
            server,
            ssl_context=ctx,
            allow_insecure=bool(options.get("allow_insecure")),
            timeout_s=5.0,
        )
    except SyncEngineError:
        return None
    try:
        health = await transport.health()
    except SyncEngineError:
        return None  # the sync itself reports the failure with the right message
    finally:
        await transport.aclose()
    head = health.get("head")
    return head if type(head) is int else None


async def wait_for_daemon(
    db: str | os.PathLike[str], timeout: float, pid: int | None
) -> SyncOutcome:
    """With a daemon syncing the store: wait until it has pushed everything and is LIVE.

    Raises:
        NotSynced: the daemon cannot sync now (backoff, failed, offline) or did not catch up
            within ``timeout``; queued work stays queued.
    """
    deadline = time.monotonic() + timeout
    with Store(Path(db)) as store:
        while True:
            health = store.health()
            state = health.state
            if state in _STALLED:
                raise NotSynced(
                    f"the daemon (pid {pid}) cannot sync now (state {state.value}); "
                    "queued work stays queued"
                )
            if state is ConnectionState.LIVE and health.pending == 0 and health.sending == 0:
                return SyncOutcome(
                    pushed=None,
                    pulled=None,
                    cursor=health.cursor,
                    pending=0,
                    failed=health.failed,
                    daemon=True,
                )
            if time.monotonic() >= deadline:
                raise NotSynced(
                    f"the daemon (pid {pid}) did not catch up within {timeout:g} s "
                    f"(state {state.value}, {health.pending} pending)"
                )
            await asyncio.sleep(0.1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
