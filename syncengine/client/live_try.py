"""The live channel's handshakes, run beside the REST session and never in its way.

A session pushes and catches up over REST whatever happens to the live channel: a middlebox
may answer the upgrade 5xx, never answer it, or accept it and then pass nothing. Each
handshake runs as a task bounded by :func:`~syncengine.core.schedule.live_handshake_s` (the
upgrade, then the ``ready`` frame); the session adopts the link when it is ready, and when
it fails the sync protocol says when to try again (backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from syncengine.core.schedule import live_handshake_s
from syncengine.errors import AuthFailed, TLSVerificationFailed, TransportError, WireError
from syncengine.transport.base import LiveLink, LiveUnavailable, Transport

__all__ = ["LiveTry", "is_live_fallback"]

log = logging.getLogger("syncengine.engine")


def is_live_fallback(exc: BaseException) -> bool:
    """Whether a failed live handshake leaves the session polling over REST.

    Everything the network or a middlebox can do to the channel does (refused, 5xx, no
    answer, no ``ready`` frame, a garbled one); a refused token or certificate does not: it
    is the account's or the server's, and REST would meet it too.
    """
    if isinstance(exc, AuthFailed | TLSVerificationFailed):
        return False
    return isinstance(exc, LiveUnavailable | TransportError | WireError | TimeoutError | OSError)


class LiveTry:
    """At most one live handshake under way for a session.

    Args:
        session: the session the link is for.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.task: asyncio.Task[LiveLink] | None = None

    @property
    def pending(self) -> bool:
        """A handshake is under way."""
        return self.task is not None and not self.task.done()

    @property
    def done(self) -> bool:
        """A handshake ended and its outcome was not taken yet."""
        return self.task is not None and self.task.done()

    def start(self, transport: Transport) -> None:
        """Start a handshake unless one is under way."""
        if self.task is not None:
            return
        self.session.core.live_try_started()
        deadline = live_handshake_s(self.session.config.request_timeout_s)
        self.task = asyncio.get_running_loop().create_task(
            self._connect(transport, deadline), name="syncengine-live-handshake"
        )

    @staticmethod
    async def _connect(transport: Transport, deadline: float) -> LiveLink:
        # The transport bounds the upgrade and the ready frame each; this bounds the whole,
        # whatever transport the app plugged in.
        async with asyncio.timeout(2 * deadline + 1):
            return await transport.connect_live()

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the handshake under way to end."""
        if self.pending:
            assert self.task is not None
            await asyncio.wait([self.task], timeout=timeout)

    def take(self) -> LiveLink | None:
        """The link of the handshake that ended, or None when it failed (the failure is
        recorded and the next try planned).

        Raises:
            AuthFailed, TLSVerificationFailed: the handshake met the account's or the
                server's own refusal (the session ends as it would over REST).
        """
        task, self.task = self.task, None
        if task is None or not task.done():
            self.task = task
            return None
        exc = task.exception()
        if exc is None:
            return task.result()
        if not is_live_fallback(exc):
            raise exc
        self.session.keeper.live_failed(exc)
        return None

    async def cancel(self) -> None:
        """Abandon a handshake under way (the session ends); a link it opened is closed."""
        task, self.task = self.task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            link: Any = await task
            with contextlib.suppress(Exception):
                await link.close()
