"""Ending background tasks without losing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["cancel_and_wait", "wait_through_cancel"]


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until all of them have ended, whatever they ended with.

    A cancellation of the *caller* while it waits is not swallowed: awaiting each task under
    ``suppress(CancelledError)`` would also swallow the caller's own CancelledError, so a
    ``close()`` that cancels the sync loop while a failed session winds down would be lost,
    the loop would back off and reconnect, and ``close()`` would wait for it for ever.
    """
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)  # raises only if the caller itself is cancelled
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the session is over, its outcome no longer matters


async def wait_through_cancel(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait until every one of ``futures`` has ended, even when the caller is cancelled
    meanwhile, and then let that cancellation through.

    For work that cannot be stopped part way (an apply thread inside its transaction: the
    store must not be closed under it). Waiting under ``suppress(BaseException)`` would wait
    just as well but swallow the caller's cancellation, so a ``close()`` landing then would
    be lost and the sync loop would go on.
    """
    cancelled = False
    while True:
        try:
            await asyncio.wait(futures)  # asyncio.wait never cancels what it waits for
        except asyncio.CancelledError:
            cancelled = True
            continue
        break
    for future in futures:
        if not future.cancelled():
            future.exception()  # retrieved: the caller is already failing or cancelled
    if cancelled:
        raise asyncio.CancelledError
