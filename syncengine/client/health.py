"""What the syncing process knows of its own health, and its copy in the store.

``SyncEngine.health()`` reads it from memory; ``syncengine status`` in another process reads
the copy the syncing process keeps in the store's ``meta`` table (see
:func:`health_meta`), written on every state change, live-channel change, gap and catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

import attrs

from syncengine.core.sync import SyncProtocol
from syncengine.errors import StoreError
from syncengine.models import ConnectionState, SyncHealth

__all__ = [
    "HEALTH_META_KEYS",
    "HealthKeeper",
    "HealthNotes",
    "error_doc",
    "health_meta",
    "sync_mode",
]

log = logging.getLogger("syncengine.engine")

#: The ``meta`` keys the syncing process writes for readers in other processes.
HEALTH_META_KEYS = ("mode", "open_gaps", "server_head", "last_error", "next_retry_at")


def error_doc(
    exc: BaseException, *, kind: str | None = None, at: float | None = None
) -> dict[str, Any]:
    """``{kind, message, at}`` for ``exc``: ``kind`` defaults to its class in snake case."""
    name = kind or re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    message = str(exc) or type(exc).__name__
    return {"kind": name, "message": message, "at": time.time() if at is None else at}


def sync_mode(state: ConnectionState, *, link: bool, reached: bool = True) -> str:
    """``live`` (the live channel is up), ``polling`` (REST keeps the store current: the
    server answered in this session) or ``offline`` (nothing does: connecting, backing off,
    failed, stopped, or syncing towards a server that has not answered)."""
    if link:
        return "live"
    if reached and state in (ConnectionState.SYNCING, ConnectionState.LIVE):
        return "polling"
    return "offline"


@attrs.define
class HealthNotes:
    """The last error and the next planned try, as the session saw them.

    Attributes:
        last_error: ``{kind, message, at}`` of the last failure not yet recovered from.
        next_retry_at: when the next attempt (a session after a backoff, or a live
            handshake while polling) is due, in epoch seconds.
    """

    last_error: dict[str, Any] | None = None
    next_retry_at: float | None = None

    def failed(self, error: dict[str, Any], retry_in: float | None) -> None:
        """A failure; the next try is ``retry_in`` seconds away (None: none planned)."""
        self.last_error = error
        self.next_retry_at = None if retry_in is None else error["at"] + retry_in

    def recovered(self) -> None:
        """Everything works again (the live channel is up)."""
        self.last_error = None
        self.next_retry_at = None


def health_meta(core: SyncProtocol, notes: HealthNotes, mode: str) -> dict[str, str | None]:
    """The ``meta`` values that carry the health to readers in other processes."""
    head = core.server_head
    return {
        "mode": mode,
        "open_gaps": str(len(core.gaps)),
        "server_head": str(head) if type(head) is int else None,
        "last_error": json.dumps(notes.last_error) if notes.last_error else None,
        "next_retry_at": repr(notes.next_retry_at) if notes.next_retry_at is not None else None,
    }


class HealthKeeper:
    """The health of one session: kept in memory, copied into the store for other processes.

    Args:
        session: the session it describes.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.notes = HealthNotes()
        self._recorded: dict[str, str | None] | None = None

    def values(self) -> dict[str, str | None]:
        """The ``meta`` values of the health now (see :func:`health_meta`)."""
        return health_meta(self.session.core, self.notes, self.session.mode)

    def recorded(self, values: dict[str, str | None]) -> None:
        """``values`` were written with the state (in the same transaction)."""
        self._recorded = values

    def health(self) -> SyncHealth:
        """The store's health with what this process knows of the sync (gaps, lag, mode,
        the last error, the next try)."""
        session = self.session
        core = session.core
        health = session.require_store().health(open_gaps=len(core.gaps))
        return attrs.evolve(
            health,
            lag=core.lag,
            gaps=len(core.gaps),
            last_error=self.notes.last_error,
            next_retry_at=self.notes.next_retry_at,
            mode=session.mode,
        )

    def record(self) -> None:
        """Copy the health into the store for ``syncengine status`` (syncing engines only;
        nothing is written when it has not changed since the last copy)."""
        session = self.session
        values = self.values()
        if session.store is None or not session.config.connect or values == self._recorded:
            return
        with contextlib.suppress(StoreError):
            session.store.set_meta(**values)
            self._recorded = values

    def live_failed(self, exc: BaseException) -> None:
        """A live handshake failed while REST works: poll, say why, and plan the next try."""
        retry_in = self.session.core.receive_live_failed(asyncio.get_running_loop().time())
        log.warning(
            "live channel unavailable, polling over REST (retry in %.1fs): %s",
            retry_in,
            exc,
        )
        message = f"live channel: {exc or type(exc).__name__}; polling over REST"
        self.notes.failed(error_doc(exc, kind="live_unavailable") | {"message": message}, retry_in)
        self.record()

    def live_pending(self) -> None:
        """REST works and the live handshake has not ended yet: say so while polling."""
        self.notes.last_error = error_doc(
            TimeoutError("live channel: handshake not answered yet; polling over REST"),
            kind="live_pending",
        )
        self.record()
