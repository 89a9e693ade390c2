"""Order keys for events a server does not number (Matrix), and the opaque cursor's column.

Protocol v1's server gives every durable event a dense per-conversation ``seq``. A Matrix
homeserver gives none: it names events by ``event_id``. The store then assigns ``seq`` itself,
in delivery order (the transport delivers each room oldest first, gaps filled), and records
``event_id -> seq`` in ``event_seqs`` so that a repeated event keeps its key, and receipts and
read positions can be translated between seqs and event ids.

The first event of a room gets ``FIRST_SEQ`` (2**32): history paged back later counts down
from the lowest key, so there is room below.

Every function takes a connection inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from syncengine.events import DurableEvent, MessageReceived, ReadReceipt, ServerEvent
from syncengine.store.queries import STREAM

__all__ = [
    "FIRST_SEQ",
    "event_id_at",
    "message_event_id",
    "needs_numbering",
    "number_events",
    "set_token",
]

#: The order key of a Matrix room's first event (history counts down from the lowest).
FIRST_SEQ = 1 << 32


def needs_numbering(events: Sequence[ServerEvent]) -> bool:
    """True when some durable event has no seq (its server numbers nothing)."""
    return any(isinstance(ev, DurableEvent) and ev.seq is None for ev in events)


def _event_key(ev: DurableEvent) -> str | None:
    """The id that names this event in the server's stream (None: unnamed)."""
    if ev.event_id:
        return ev.event_id
    if isinstance(ev, MessageReceived):
        return ev.message_id
    return None


class _Counter:
    """The next forward and backward order keys per conversation, read once per batch."""

    def __init__(self, c: Any) -> None:
        self.c = c
        self.high: dict[str, int] = {}
        self.low: dict[str, int] = {}

    def _bounds(self, cid: str) -> None:
        if cid in self.high:
            return
        row = self.c.execute(
            "SELECT MAX(seq), MIN(seq) FROM event_seqs WHERE conversation_id = ?", (cid,)
        ).fetchone()
        high, low = (row[0], row[1]) if row and row[0] is not None else (None, None)
        self.high[cid] = FIRST_SEQ - 1 if high is None else high
        self.low[cid] = FIRST_SEQ if low is None else low

    def forward(self, cid: str) -> int:
        self._bounds(cid)
        self.high[cid] += 1
        return self.high[cid]

    def current(self, cid: str) -> int:
        self._bounds(cid)
        return max(self.high[cid], 0)

    def backward(self, cid: str) -> int:
        self._bounds(cid)
        self.low[cid] -= 1
        return self.low[cid]


def number_events(
    c: Any, events: Sequence[ServerEvent], *, backward: bool = False
) -> list[ServerEvent]:
    """The events with a seq for each durable event that had none.

    A known ``event_id`` keeps its key (a repeat is a no-op, G4); a new one gets the next key
    of its conversation (``backward``: the previous one, for history paged back, given oldest
    first). A receipt takes the current key (it orders nothing) and its ``read_seq`` from the
    event it names; a receipt for an event not stored yet is dropped (the server keeps the
    receipt, and the next one supersedes it). Events with a seq pass unchanged.
    """
    counter = _Counter(c)
    out: list[ServerEvent] = []
    new_rows: list[tuple[str, str, int]] = []
    order = list(reversed(events)) if backward else list(events)
    for ev in order:
        if not isinstance(ev, DurableEvent) or ev.seq is not None:
            out.append(ev)
            continue
        cid = ev.conversation_id
        if isinstance(ev, ReadReceipt):
            numbered = _receipt(c, counter, ev, new_rows)
            if numbered is not None:
                out.append(numbered)
            continue
        key = _event_key(ev)
        seq = _known_seq(c, key, new_rows) if key else None
        if seq is None:
            seq = counter.backward(cid) if backward else counter.forward(cid)
            if key:
                new_rows.append((key, cid, seq))
        out.append(attrs.evolve(ev, seq=seq))
    if new_rows:
        c.executemany(
            "INSERT INTO event_seqs(event_id, conversation_id, seq) VALUES (?, ?, ?) "
            "ON CONFLICT(event_id) DO NOTHING",
            new_rows,
        )
    return out[::-1] if backward else out


def _known_seq(c: Any, key: str, new_rows: list[tuple[str, str, int]]) -> int | None:
    for event_id, _, seq in new_rows:
        if event_id == key:
            return seq
    row = c.execute("SELECT seq FROM event_seqs WHERE event_id = ?", (key,)).fetchone()
    return int(row[0]) if row else None


def _receipt(
    c: Any, counter: _Counter, ev: ReadReceipt, new_rows: list[tuple[str, str, int]]
) -> ReadReceipt | None:
    read_seq = ev.read_seq
    if read_seq is None and ev.read_event_id:
        read_seq = _known_seq(c, ev.read_event_id, new_rows)
    if read_seq is None:
        return None
    return attrs.evolve(ev, seq=counter.current(ev.conversation_id), read_seq=read_seq)


def event_id_at(c: Any, conversation_id: str, seq: int) -> str | None:
    """The id of the newest named event at or below ``seq`` (a read position as Matrix
    names it); None when nothing there is named yet."""
    row = c.execute(
        "SELECT event_id FROM event_seqs WHERE conversation_id = ? AND seq <= ? "
        "ORDER BY seq DESC LIMIT 1",
        (conversation_id, seq),
    ).fetchone()
    return str(row[0]) if row else None


def message_event_id(c: Any, me: str, op_id: str) -> str | None:
    """The server id of the message ``me`` sent with ``op_id`` (stored, or from its
    acknowledgement); None when the send is not acknowledged yet."""
    row = c.execute(
        "SELECT id FROM messages WHERE sender = ? AND op_id = ? AND id IS NOT NULL", (me, op_id)
    ).fetchone()
    if row:
        return str(row[0])
    row = c.execute(
        "SELECT json_extract(result, '$.message_id') FROM outbox "
        "WHERE op_id = ? AND state = 'sent'",
        (op_id,),
    ).fetchone()
    return str(row[0]) if row and row[0] else None


def set_token(c: Any, token: str, now: float) -> None:
    """Store an opaque cursor (there is no order to guard: the newest token is the cursor)."""
    c.execute(
        "INSERT INTO cursors(stream, pos, token, updated_at) VALUES (?, 0, ?, ?) "
        "ON CONFLICT(stream) DO UPDATE SET token = excluded.token, "
        "updated_at = excluded.updated_at",
        (STREAM, token, now),
    )
