"""The resync after a discontinuity: a cursor the server no longer serves (410 Gone, G5) or
another server epoch (the server's log was restored or replaced).

The plan: take the server's conversations and its stream head; for each conversation read
its history from the newest page down to the lowest seq the store holds (what the store holds
is re-validated, page by page, and replaced by the server's copy), at most
:data:`MAX_PAGES_PER_CONVERSATION` pages; older history is left to back-pagination on demand.
Then continue from the head, and tell the app once
(:class:`~syncengine.events.Discontinuity`).

The plan is resumable: :meth:`Resync.state` is plain data the driver persists after every
step, and :meth:`Resync.restore` continues from it, so a 429 or a restart goes on from the
page it stopped at (never from the newest page again). Pure: the driver performs the
requests and feeds the answers back; what to store comes out as data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from syncengine.core.cursor import Cursor
from syncengine.core.history import RESYNC_HISTORY_PAGE
from syncengine.core.requests import ConversationsSnapshot, HistoryRequest
from syncengine.wire import HistoryPageWire

__all__ = [
    "MAX_PAGES_PER_CONVERSATION",
    "ConversationGone",
    "HistoryWrites",
    "Resync",
    "readded_conversations",
]

#: The bound of one conversation's re-validation: beyond it, what the store holds below the
#: pages read is dropped and fetched again on demand (back-pagination).
MAX_PAGES_PER_CONVERSATION = 50


@attrs.frozen
class HistoryWrites:
    """Make the store's copy of seqs ``low..high`` of a conversation the server's.

    Attributes:
        conversation_id: the conversation.
        messages: the server's messages of that range (oldest first).
        low: the lowest seq the page covers (0 at the start of the history).
        high: the highest seq it covers, or None for "everything above ``low``" (the newest
            page: messages the server no longer has are dropped with it).
        complete: the conversation's history is now whole in the store.
        drop_below: stored messages below this seq are dropped (the plan's page bound was
            reached; back-pagination fetches them again on demand), or None.
        last_seq: the snapshot's ``last_seq`` of the conversation (the state the copy is
            at: an edit the live channel brings later has a higher seq).
    """

    conversation_id: str
    messages: Sequence[Any]
    low: int
    high: int | None
    complete: bool
    drop_below: int | None = None
    last_seq: int = 0


@attrs.frozen
class ConversationGone:
    """The conversation answered 404 (the user left it): remove it from the store."""

    conversation_id: str


class Resync:
    """One resync, driven by requests and answers.

    Args:
        old_cursor: the cursor the server refused.
        epoch: the server epoch the resync takes the store to ("" when the server has none).
    """

    def __init__(self, old_cursor: Cursor, epoch: str = "") -> None:
        self.old_cursor = old_cursor
        self.epoch = epoch
        self.head: int | None = None
        # Per pending conversation: [id, floor (lowest stored seq or None), snapshot
        # last_seq]; the first one is being read.
        self._pending: list[list[Any]] = []
        self._before: int | None = None
        self._pages = 0
        self._snapshot_asked = False

    # --- persistence -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The plan as plain data (JSON-able), to continue after a 429 or a restart."""
        return {
            "old_cursor": self.old_cursor,
            "epoch": self.epoch,
            "head": self.head,
            "pending": [list(p) for p in self._pending],
            "before": self._before,
            "pages": self._pages,
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Resync:
        """A plan continued from :meth:`state`; one that never got its snapshot starts over."""
        plan = cls(state.get("old_cursor", 0), state.get("epoch", ""))
        if state.get("head") is not None:
            plan.head = int(state["head"])
            plan._pending = [list(p) for p in state.get("pending", [])]
            plan._before = state.get("before")
            plan._pages = int(state.get("pages", 0))
        return plan

    # --- requests and answers ----------------------------------------------------------

    def next_request(self) -> ConversationsSnapshot | HistoryRequest | None:
        """The next request to perform, or None when the store is rebuilt."""
        if self.head is None:
            if self._snapshot_asked:
                raise RuntimeError("resync: the snapshot answer was not received")
            self._snapshot_asked = True
            return ConversationsSnapshot()
        if not self._pending:
            return None
        return HistoryRequest(self._pending[0][0], self._before, RESYNC_HISTORY_PAGE)

    def new_cursor(self) -> int:
        """The cursor to continue from: the snapshot's head."""
        if self.head is None:
            raise RuntimeError("resync: no snapshot received yet")
        return self.head

    def receive_snapshot(
        self,
        conversations: Sequence[dict[str, Any]],
        head: int,
        lowest_stored: Mapping[str, int] | None = None,
    ) -> None:
        """The server's conversations and head (the driver replaces the store's with them).

        Args:
            conversations: the snapshot's conversations.
            head: the snapshot's stream head.
            lowest_stored: the lowest seq the store holds per conversation (absent: none).
        """
        floors = lowest_stored or {}
        self.head = head
        self._pending = [
            [c["id"], floors.get(c["id"]), int(c.get("last_seq", 0) or 0)] for c in conversations
        ]
        self._before = None
        self._pages = 0

    def receive_history(self, page: HistoryPageWire) -> HistoryWrites:
        """One page of the conversation being read: what to store."""
        cid, floor, last_seq = self._pending[0]
        first = self._before is None
        high = None if first else self._before - 1
        end = page.end_of_history or not page.messages
        low = 0 if end else min(m.seq for m in page.messages)
        self._pages += 1
        covered = end or (floor is None or low <= floor)
        bounded = not covered and self._pages >= MAX_PAGES_PER_CONVERSATION
        if covered or bounded:
            self._next_conversation()
        else:
            self._before = low
        return HistoryWrites(
            cid,
            page.messages,
            low,
            high,
            complete=end,
            drop_below=low if bounded else None,
            last_seq=last_seq,
        )

    def receive_gone(self) -> ConversationGone:
        """The conversation being read answered 404: the user is no longer a member."""
        cid = self._pending[0][0]
        self._next_conversation()
        return ConversationGone(cid)

    def _next_conversation(self) -> None:
        self._pending.pop(0)
        self._before = None
        self._pages = 0


def readded_conversations(
    updates: Sequence[tuple[str, Sequence[str]]],
    me: str,
    stored_members: Mapping[str, Sequence[str] | None],
) -> list[str]:
    """Conversations that a batch's ``conversation_updated`` events add ``me`` back to.

    The stream never shows a user what was said while he was out of a conversation, but the
    server's history does once he is back: such a conversation's history is read again (as a
    resync reads it) so the store holds what the history shows.

    Args:
        updates: ``(conversation_id, members)`` of each ``conversation_updated``, in order.
        me: the store's user.
        stored_members: the members the store holds per conversation before the batch
            (None: the conversation is not in the store: new to this user, nothing missed).
    """
    out: list[str] = []
    members = dict(stored_members)
    for cid, now in updates:
        before = members.get(cid)
        if me in now and before is not None and me not in before and cid not in out:
            out.append(cid)
        members[cid] = list(now)
    return out
