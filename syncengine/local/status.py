"""The sync health of a store as a reader sees it, with the daemon's liveness folded in."""

from __future__ import annotations

import os

import attrs

from syncengine.local.account import open_store, require_account
from syncengine.local.lock import daemon_info
from syncengine.models import ConnectionState, SyncHealth

__all__ = ["StoreStatus", "effective_state", "store_status"]

#: States that only a running syncing process can be in; recorded by a process that is gone,
#: they are stale, and a status must never claim a sync that is not happening.
_CONNECTED_STATES = frozenset(
    {
        ConnectionState.CONNECTING,
        ConnectionState.SYNCING,
        ConnectionState.LIVE,
        ConnectionState.BACKOFF,
    }
)


@attrs.frozen(kw_only=True)
class StoreStatus:
    """A store's health, account and daemon, read without syncing.

    Attributes:
        state: the connection state; ``OFFLINE`` when the recorded one is stale.
        health: the store's own health figures.
        account: ``server``, ``user`` and ``device`` (None when not logged in).
        daemon_running: whether a process holds the store's lock.
        daemon_pid: its pid, when known.
    """

    state: ConnectionState
    health: SyncHealth
    account: dict[str, str | None]
    daemon_running: bool
    daemon_pid: int | None


def effective_state(recorded: ConnectionState, *, writer_running: bool) -> ConnectionState:
    """The state to report: a connected state recorded by a process that is gone is OFFLINE."""
    if not writer_running and recorded in _CONNECTED_STATES:
        return ConnectionState.OFFLINE
    return recorded


def store_status(db: str | os.PathLike[str]) -> StoreStatus:
    """Read a store's status (it must exist; nothing is created or written).

    Raises:
        NotLoggedIn: there is no store at ``db``, or no login ever succeeded with it.
        StoreCorrupt, SchemaTooNew: the file cannot be used.
    """
    store = open_store(db)
    try:
        account = require_account(store, db)
        health = store.health()
    finally:
        store.close()
    running, pid = daemon_info(db)
    return StoreStatus(
        state=effective_state(health.state, writer_running=running),
        health=health,
        account=account,
        daemon_running=running,
        daemon_pid=pid,
    )
