"""The resync after a cursor the server no longer serves (410 Gone, G5).

The plan: take the server's conversations and its stream head; read each conversation's
history back to its start; then continue from the head, and tell the app once
(:class:`~syncengine.events.Discontinuity`). Pure: the driver performs the requests and feeds
the answers back; what to store comes out as data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from syncengine.core.cursor import Cursor
from syncengine.core.history import RESYNC_HISTORY_PAGE
from syncengine.core.requests import ConversationsSnapshot, HistoryRequest
from syncengine.wire import HistoryPageWire

__all__ = ["HistoryWrites", "Resync"]


@attrs.frozen
class HistoryWrites:
    """Store these messages; ``complete``: the conversation's history is now whole."""

    conversation_id: str
    messages: Sequence[Any]
    complete: bool


class Resync:
    """One resync, driven by requests and answers.

    Args:
        old_cursor: the cursor the server refused.
    """

    def __init__(self, old_cursor: Cursor) -> None:
        self.old_cursor = old_cursor
        self.head: int | None = None
        self._pending: list[str] = []
        self._before: int | None = None
        self._snapshot_asked = False

    def next_request(self) -> ConversationsSnapshot | HistoryRequest | None:
        """The next request to perform, or None when the store is rebuilt."""
        if self.head is None:
            if self._snapshot_asked:
                raise RuntimeError("resync: the snapshot answer was not received")
            self._snapshot_asked = True
            return ConversationsSnapshot()
        if not self._pending:
            return None
        return HistoryRequest(self._pending[0], self._before, RESYNC_HISTORY_PAGE)

    def new_cursor(self) -> int:
        """The cursor to continue from: the snapshot's head."""
        if self.head is None:
            raise RuntimeError("resync: no snapshot received yet")
        return self.head

    def receive_snapshot(self, conversations: Sequence[dict[str, Any]], head: int) -> None:
        """The server's conversations and head (the driver replaces the store's with them)."""
        self.head = head
        self._pending = [c["id"] for c in conversations]
        self._before = None

    def receive_history(self, page: HistoryPageWire) -> HistoryWrites:
        """One page of the conversation being read: what to store."""
        cid = self._pending[0]
        done = page.end_of_history or not page.messages
        if done:
            self._pending.pop(0)
            self._before = None
        else:
            self._before = page.messages[0].seq
        return HistoryWrites(cid, page.messages, done)
