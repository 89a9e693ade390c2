"""Decisions for a transport whose cursor is an opaque, unordered token (Matrix), sans I/O.

Two tokens cannot be compared, so two producers may never both move the cursor: the one
that would commit last could move it back past events the other committed (G3). One
producer owns it at a time:

- while the live link is up, the link: its stream carries a
  :class:`~syncengine.events.Checkpoint` after the events of each server response, and the
  cursor is committed with the events before it. The link starts from the persisted cursor,
  so it *is* the catch-up: the first Checkpoint means caught up, and no pull runs beside it;
- while polling, the pull loop (each page with its ``next``), as in protocol v1.

The server numbers nothing either: events come with ``seq=None`` and the store assigns order
keys (``store/unordered.py``); gaps come as :class:`~syncengine.events.Gap` markers from the
transport, never as seq jumps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from syncengine.core.cursor import Cursor, TransportCapabilities
from syncengine.events import Checkpoint, Discontinuity, DurableEvent, Gap, ServerEvent

__all__ = [
    "LiveSegment",
    "for_app",
    "link_owns_cursor",
    "op_targets",
    "split_live_batch",
    "sync_before_push",
    "with_targets",
]


def link_owns_cursor(caps: TransportCapabilities, link_up: bool) -> bool:
    """True when the live link, not the pull loop, moves the cursor (an opaque cursor and a
    link up): pulls are then skipped, and Checkpoints commit the cursor."""
    return link_up and not caps.ordered_cursor


def sync_before_push(caps: TransportCapabilities) -> bool:
    """True when a session must read the server before pushing: with opaque cursors
    (Matrix) an acknowledgement lost in a crash is only recovered from the echo, and the
    server forgets a txnId after 24 h, so replaying first could send twice."""
    return not caps.ordered_cursor


@attrs.frozen
class LiveSegment:
    """A run of live events and the cursor to commit with them.

    Attributes:
        durable: the durable events, in arrival order.
        other: typing, presence and the other non-durable events (applied apart).
        gaps: the conversations a :class:`Gap` marker named (their history is incomplete).
        cursor: the cursor of the Checkpoint that closed the run (None: the run is not
            closed yet; commit its events without moving the cursor).
    """

    durable: tuple[DurableEvent, ...]
    other: tuple[ServerEvent, ...]
    gaps: tuple[Gap, ...]
    cursor: Cursor | None


def split_live_batch(batch: Sequence[ServerEvent]) -> list[LiveSegment]:
    """Cut a batch of live events after each Checkpoint.

    Each segment's events are committed with its Checkpoint's cursor, in one transaction,
    so the cursor never passes an event that is not stored (G3). Events after the last
    Checkpoint form a final segment without a cursor.
    """
    segments: list[LiveSegment] = []
    durable: list[DurableEvent] = []
    other: list[ServerEvent] = []
    gaps: list[Gap] = []
    for ev in batch:
        if isinstance(ev, Checkpoint):
            segments.append(LiveSegment(tuple(durable), tuple(other), tuple(gaps), ev.cursor))
            durable, other, gaps = [], [], []
        elif isinstance(ev, DurableEvent):
            durable.append(ev)
        elif isinstance(ev, Gap):
            gaps.append(ev)
        else:
            other.append(ev)
    if durable or other or gaps:
        segments.append(LiveSegment(tuple(durable), tuple(other), tuple(gaps), None))
    return segments


def op_targets(op: dict[str, Any]) -> tuple[str | None, int | None]:
    """What an operation names that the server only knows by event id.

    Returns:
        ``(target_op_id, None)`` for an edit or delete naming its message by the op id that
        sent it; ``(None, seq)`` for a read receipt up to a store-assigned seq; ``(None,
        None)`` when the operation already names event ids (or names nothing).
    """
    kind = op.get("kind")
    if kind in ("edit", "delete") and not isinstance(op.get("message_id"), str):
        target = op.get("target_op_id")
        return (target if isinstance(target, str) else None), None
    if kind == "mark_read" and not isinstance(op.get("event_id"), str):
        seq = op.get("seq")
        return None, (seq if type(seq) is int else None)
    return None, None


def with_targets(op: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    """``op`` naming ``event_id`` (an edit's or delete's ``message_id``, a receipt's
    ``event_id``). Unchanged when ``event_id`` is None: the transport then leaves it
    unanswered and it is retried later, its conversation held back (order is kept)."""
    if event_id is None:
        return op
    key = "event_id" if op.get("kind") == "mark_read" else "message_id"
    return {**op, key: event_id}


def for_app(event: ServerEvent) -> ServerEvent | Discontinuity:
    """What the app is told of an applied event: a :class:`Gap` (a hole the transport could
    not fill) becomes a per-conversation :class:`Discontinuity`; everything else as is."""
    if isinstance(event, Gap):
        return Discontinuity(
            old_cursor=event.since, new_cursor=event.token, conversation_id=event.conversation_id
        )
    return event
