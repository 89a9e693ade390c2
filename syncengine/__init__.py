"""syncengine: an offline-first messaging sync engine.

The public API::

    from syncengine import SyncEngine, BlockingEngine
"""

from __future__ import annotations

import typing as _typing

from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    NotFound,
    RateLimited,
    Rejected,
    SchemaTooNew,
    ServerUnavailable,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreLockHeld,
    SyncEngineError,
    TLSVerificationFailed,
    TransportError,
    UsageError,
    WireError,
)
from syncengine.events import (
    ConnectionStateChanged,
    ConversationUpdated,
    Discontinuity,
    ErrorEvent,
    MessageDeleted,
    MessageFailed,
    MessageQueued,
    MessageReceived,
    MessageSent,
    MessageUpdated,
    ReadReceipt,
    SyncCompleted,
    TypingStarted,
    TypingStopped,
    UnknownEvent,
    UserPresenceChanged,
)
from syncengine.models import (
    ConnectionState,
    Conversation,
    HistoryPage,
    Message,
    MessageState,
    OpKind,
    OutboxItem,
    OutboxState,
    Presence,
    PresenceStatus,
    SyncHealth,
    Typing,
    new_id,
)

if _typing.TYPE_CHECKING:
    from syncengine.blocking import BlockingEngine
    from syncengine.client.engine import SyncEngine

__version__ = "0.1.0"

_LAZY = {"SyncEngine": "syncengine.client.engine", "BlockingEngine": "syncengine.blocking"}


def __getattr__(name: str) -> _typing.Any:
    # The engine pulls in httpx, websockets and stamina; the CLI's read commands need none of
    # them, so they are imported on first use (PEP 562) to keep `syncengine status` quick.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'syncengine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AuthFailed",
    "BlockingEngine",
    "ConnectionState",
    "ConnectionStateChanged",
    "Conversation",
    "ConversationUpdated",
    "CursorExpired",
    "Discontinuity",
    "ErrorEvent",
    "HistoryPage",
    "Message",
    "MessageDeleted",
    "MessageFailed",
    "MessageQueued",
    "MessageReceived",
    "MessageSent",
    "MessageState",
    "MessageUpdated",
    "NotFound",
    "OpKind",
    "OutboxItem",
    "OutboxState",
    "Presence",
    "PresenceStatus",
    "RateLimited",
    "ReadReceipt",
    "Rejected",
    "SchemaTooNew",
    "ServerUnavailable",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLockHeld",
    "StoreLocked",
    "SyncCompleted",
    "SyncEngine",
    "SyncEngineError",
    "SyncHealth",
    "TLSVerificationFailed",
    "TransportError",
    "Typing",
    "TypingStarted",
    "TypingStopped",
    "UnknownEvent",
    "UsageError",
    "UserPresenceChanged",
    "WireError",
    "__version__",
    "new_id",
]
