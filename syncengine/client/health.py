"""What the syncing process knows of its own health, and its copy in the store.

``SyncEngine.health()`` reads it from memory; ``syncengine status`` in another process reads
the copy the syncing process keeps in the store's ``meta`` table (see
:func:`health_meta`), written on every state change, live-channel change, gap and catch-up.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import attrs

from syncengine.core.sync import SyncProtocol
from syncengine.models import ConnectionState

__all__ = ["HEALTH_META_KEYS", "HealthNotes", "error_doc", "health_meta", "sync_mode"]

#: The ``meta`` keys the syncing process writes for readers in other processes.
HEALTH_META_KEYS = ("mode", "open_gaps", "server_head", "last_error", "next_retry_at")


def error_doc(exc: BaseException, *, kind: str | None = None, at: float | None = None) -> dict[str, Any]:
    """``{kind, message, at}`` for ``exc``: ``kind`` defaults to its class in snake case."""
    name = kind or re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    message = str(exc) or type(exc).__name__
    return {"kind": name, "message": message, "at": time.time() if at is None else at}


def sync_mode(state: ConnectionState, *, link: bool) -> str:
    """``live`` (the live channel is up), ``polling`` (REST keeps the store current) or
    ``offline`` (nothing does: connecting, backing off, failed or stopped)."""
    if link:
        return "live"
    if state in (ConnectionState.SYNCING, ConnectionState.LIVE):
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


def health_meta(
    core: SyncProtocol, notes: HealthNotes, mode: str
) -> dict[str, str | None]:
    """The ``meta`` values that carry the health to readers in other processes."""
    head = core.server_head
    return {
        "mode": mode,
        "open_gaps": str(len(core.gaps)),
        "server_head": str(head) if type(head) is int else None,
        "last_error": json.dumps(notes.last_error) if notes.last_error else None,
        "next_retry_at": repr(notes.next_retry_at) if notes.next_retry_at is not None else None,
    }
