"""Typed events; they live in :mod:`syncengine.protocol.events` (this path keeps working)."""

from __future__ import annotations

from syncengine.protocol.events import *  # noqa: F403
from syncengine.protocol.events import (
    SERVER_EVENT_TYPES,
    ConnectionStateChanged,
    ConversationUpdated,
    Discontinuity,
    DurableEvent,
    EngineEvent,
    ErrorEvent,
    Event,
    MessageDeleted,
    MessageFailed,
    MessageQueued,
    MessageReceived,
    MessageSent,
    MessageUpdated,
    ReadReceipt,
    ServerEvent,
    SyncCompleted,
    TypingStarted,
    TypingStopped,
    UnknownEvent,
    UserPresenceChanged,
)

__all__ = [
    "SERVER_EVENT_TYPES",
    "ConnectionStateChanged",
    "ConversationUpdated",
    "Discontinuity",
    "DurableEvent",
    "EngineEvent",
    "ErrorEvent",
    "Event",
    "MessageDeleted",
    "MessageFailed",
    "MessageQueued",
    "MessageReceived",
    "MessageSent",
    "MessageUpdated",
    "ReadReceipt",
    "ServerEvent",
    "SyncCompleted",
    "TypingStarted",
    "TypingStopped",
    "UnknownEvent",
    "UserPresenceChanged",
]
