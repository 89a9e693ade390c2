"""One store, many processes: what the CLI, the daemon and embedding apps share.

A store has one syncing process at a time (G6) and any number of readers. This package holds
the coordination between them, none of which needs a terminal:

- :mod:`~syncengine.local.lock`: the single-writer lock (:class:`StoreLock`) and who holds it;
- :mod:`~syncengine.local.account`: an existing store, its login, its connection options;
- :mod:`~syncengine.local.status`: health as a reader reports it (a stale state is OFFLINE);
- :mod:`~syncengine.local.credentials`: log in and out (the token beside the store);
- :mod:`~syncengine.local.writes`: queueing through the engine's public API (a non-connecting
  :class:`~syncengine.SyncEngine`), so a CLI send emits ``MessageQueued`` like an app's;
- :mod:`~syncengine.local.sync`: sync under the lock, or wait for the daemon that holds it;
- :mod:`~syncengine.local.ack`: wait until one operation is acknowledged;
- :mod:`~syncengine.local.follow`: follow what the store gains.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncengine.local.account import (
        engine_options,
        login_hint,
        open_store,
        require_account,
        require_login,
        require_store,
        require_writable,
    )
    from syncengine.local.ack import check_acknowledged, wait_acknowledged
    from syncengine.local.credentials import login, logout
    from syncengine.local.follow import poll_messages, tail
    from syncengine.local.ids import resolve_conversation, resolve_operations
    from syncengine.local.lock import LOCK_WAIT_S, StoreLock, daemon_info, pid_path
    from syncengine.local.status import StoreStatus, effective_state, store_status
    from syncengine.local.sync import (
        SyncOutcome,
        SyncProgress,
        server_head,
        sync_here,
        sync_locked,
        sync_store,
        wait_for_daemon,
    )
    from syncengine.local.writes import (
        cancel_operation,
        change_members,
        queue_reaction,
        offline_engine,
        queue_conversation,
        queue_delete,
        queue_edit,
        queue_read,
        queue_send,
        requeue,
    )

__all__ = [
    "LOCK_WAIT_S",
    "StoreLock",
    "StoreStatus",
    "SyncOutcome",
    "SyncProgress",
    "cancel_operation",
    "change_members",
    "check_acknowledged",
    "daemon_info",
    "effective_state",
    "engine_options",
    "login",
    "login_hint",
    "logout",
    "offline_engine",
    "open_store",
    "pid_path",
    "poll_messages",
    "queue_conversation",
    "queue_delete",
    "queue_edit",
    "queue_reaction",
    "queue_read",
    "queue_send",
    "requeue",
    "require_account",
    "require_login",
    "require_store",
    "require_writable",
    "resolve_conversation",
    "resolve_operations",
    "server_head",
    "store_status",
    "sync_here",
    "sync_locked",
    "sync_store",
    "tail",
    "wait_acknowledged",
    "wait_for_daemon",
]

#: Where each public name lives. Imported on first use, so that a command that only reads
#: the store (``syncengine status``) does not pay for importing the engine and httpx.
_WHERE: dict[str, str] = {
    "LOCK_WAIT_S": "syncengine.local.lock",
    "StoreLock": "syncengine.local.lock",
    "StoreStatus": "syncengine.local.status",
    "SyncOutcome": "syncengine.local.sync",
    "SyncProgress": "syncengine.local.sync",
    "cancel_operation": "syncengine.local.writes",
    "change_members": "syncengine.local.writes",
    "check_acknowledged": "syncengine.local.ack",
    "daemon_info": "syncengine.local.lock",
    "effective_state": "syncengine.local.status",
    "engine_options": "syncengine.local.account",
    "login": "syncengine.local.credentials",
    "login_hint": "syncengine.local.account",
    "logout": "syncengine.local.credentials",
    "offline_engine": "syncengine.local.writes",
    "open_store": "syncengine.local.account",
    "pid_path": "syncengine.local.lock",
    "poll_messages": "syncengine.local.follow",
    "queue_conversation": "syncengine.local.writes",
    "queue_delete": "syncengine.local.writes",
    "queue_edit": "syncengine.local.writes",
    "queue_reaction": "syncengine.local.writes",
    "queue_read": "syncengine.local.writes",
    "queue_send": "syncengine.local.writes",
    "requeue": "syncengine.local.writes",
    "resolve_conversation": "syncengine.local.ids",
    "resolve_operations": "syncengine.local.ids",
    "require_account": "syncengine.local.account",
    "require_login": "syncengine.local.account",
    "require_writable": "syncengine.local.account",
    "require_store": "syncengine.local.account",
    "server_head": "syncengine.local.sync",
    "store_status": "syncengine.local.status",
    "sync_here": "syncengine.local.sync",
    "sync_locked": "syncengine.local.sync",
    "sync_store": "syncengine.local.sync",
    "tail": "syncengine.local.follow",
    "wait_acknowledged": "syncengine.local.ack",
    "wait_for_daemon": "syncengine.local.sync",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
