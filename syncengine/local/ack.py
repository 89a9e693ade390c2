"""Wait until the server acknowledged one queued operation, whoever pushes it."""

from __future__ import annotations

import asyncio
import os
import time

from syncengine.errors import NotSynced, OperationRejected, StoreLockHeld
from syncengine.local.lock import StoreLock, daemon_info
from syncengine.local.sync import sync_locked
from syncengine.models import OutboxState
from syncengine.store import Store

__all__ = ["wait_acknowledged"]

#: Store polls between two checks that the syncing process still holds the lock.
_LOCK_CHECK_EVERY = 10


async def wait_acknowledged(db: str | os.PathLike[str], op_id: str, timeout: float) -> None:
    """Wait until ``op_id`` is SENT: pushed by the daemon, or by this process when none runs.

    While another process holds the store's lock, its loop pushes the operation (within about
    0.25 s); if that process goes away first, this one takes the lock and pushes it itself.

    Raises:
        OperationRejected: the server refused it for good (it is FAILED).
        NotSynced: not acknowledged within ``timeout``; it stays queued.
    """
    deadline = time.monotonic() + timeout
    lock = StoreLock(db)
    while True:
        try:
            lock.acquire(timeout=0)
        except StoreLockHeld:
            if await _poll_acknowledged(db, op_id, deadline):
                return
            continue
        try:
            left = max(0.1, deadline - time.monotonic())
            await sync_locked(db, left, what=f"operation {op_id}")
        finally:
            lock.release()
        check_acknowledged(db, op_id)
        return


async def _poll_acknowledged(db: str | os.PathLike[str], op_id: str, deadline: float) -> bool:
    """Poll the store until ``op_id`` is SENT (True) or no process holds the lock (False)."""
    with Store(db) as store:
        checks = 0
        while True:
            item = store.outbox_item(op_id)
            if item is None or item.state is OutboxState.SENT:
                return True  # a missing SENT row was pruned: it was acknowledged long ago
            if item.state is OutboxState.FAILED:
                raise OperationRejected(op_id, item.last_error)
            if time.monotonic() >= deadline:
                raise NotSynced(
                    f"{op_id} not acknowledged in time (the syncing process is "
                    f"{store.health().state.value}); it stays queued"
                )
            checks += 1
            if checks % _LOCK_CHECK_EVERY == 0 and not daemon_info(db)[0]:
                return False
            await asyncio.sleep(0.05)


def check_acknowledged(db: str | os.PathLike[str], op_id: str) -> None:
    """Return if ``op_id`` is SENT (or pruned, which means SENT long ago).

    Raises:
        OperationRejected: it is FAILED.
        NotSynced: it is still queued (the last push deferred it).
    """
    with Store(db) as store:
        item = store.outbox_item(op_id)
    if item is None or item.state is OutboxState.SENT:
        return
    if item.state is OutboxState.FAILED:
        raise OperationRejected(op_id, item.last_error)
    raise NotSynced(
        f"{op_id} was not acknowledged (it stays queued): {item.last_error or 'deferred'}"
    )
