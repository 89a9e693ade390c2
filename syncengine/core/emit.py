"""Which applied server events the app is told about, and when presence must be re-read.

A durable event can be applied twice (a live echo and a page overlap; merging is idempotent),
but the app hears of it once: events are de-duplicated by ``pos`` over a bounded window.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from syncengine.events import (
    ConversationUpdated,
    DurableEvent,
    MessageReceived,
    MessageSent,
    ServerEvent,
)

__all__ = ["SEEN_POS_WINDOW", "EmitFilter", "sent_by_echo"]

#: How many recent positions are remembered for de-duplication.
SEEN_POS_WINDOW = 50_000


class EmitFilter:
    """De-duplication of applied events by pos, and the presence-staleness flag.

    Attributes:
        presence_stale: a conversation changed (new contacts, whose current presence only
            the server's snapshot has): fetch the presence snapshot.
    """

    def __init__(self, window: int = SEEN_POS_WINDOW) -> None:
        self.window = window
        self.presence_stale = False
        self._seen: collections.OrderedDict[int | str | None, None] = collections.OrderedDict()

    def receive_applied(
        self, events: Sequence[ServerEvent], *, listening: bool
    ) -> list[ServerEvent]:
        """The events of an applied batch to hand to the app (none when nobody listens).

        Args:
            events: the batch, as applied.
            listening: the app subscribed to events; when it did not (a daemon, a bulk
                catch-up), only the presence hint is worth any work.
        """
        if not listening:
            if not self.presence_stale:
                self.presence_stale = any(isinstance(ev, ConversationUpdated) for ev in events)
            return []
        seen = self._seen
        out: list[ServerEvent] = []
        for ev in events:
            if isinstance(ev, DurableEvent):
                # Matrix events have no pos: their event id names them instead.
                key = ev.pos if ev.pos is not None else ev.event_id
                if key is not None and key in seen:
                    continue
                if isinstance(ev, ConversationUpdated):
                    self.presence_stale = True
                seen[key] = None
                if len(seen) > self.window:
                    seen.popitem(last=False)
            out.append(ev)
        return out

    def take_presence_stale(self) -> bool:
        """True once per staleness: the caller fetches the snapshot now."""
        stale, self.presence_stale = self.presence_stale, False
        return stale


def sent_by_echo(events: Sequence[ServerEvent], op_ids: Sequence[str]) -> list[MessageSent]:
    """The :class:`MessageSent` of own sends whose server copy (the echo, live or pulled) in
    ``events`` moved them to SENT before the push's acknowledgement.

    The acknowledgement that comes later (a duplicate after a lost one, or the original
    arriving late) finds the operation SENT and reports nothing, so the echo is where the
    send is reported; whichever of the two moves the operation reports it, so once.

    Args:
        events: an applied batch.
        op_ids: the op ids the store reported moved to SENT (``ApplyResult.sent_ops``).
    """
    wanted = set(op_ids)
    out: list[MessageSent] = []
    for ev in events:
        if isinstance(ev, MessageReceived) and ev.op_id in wanted:
            wanted.discard(ev.op_id)
            out.append(
                MessageSent(
                    op_id=ev.op_id,
                    conversation_id=ev.conversation_id,
                    message_id=ev.message_id,
                    seq=ev.seq or 0,
                )
            )
    return out
