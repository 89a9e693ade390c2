"""The local store: the only code that touches SQLite."""

from __future__ import annotations

from syncengine.store.db import move_aside
from syncengine.store.outbox import IllegalOutboxMove
from syncengine.store.store import MAX_BODY_CHARS, ApplyResult, Store

__all__ = ["MAX_BODY_CHARS", "ApplyResult", "IllegalOutboxMove", "Store", "move_aside"]
