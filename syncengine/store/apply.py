"""Applying what the server says: durable events (G3, G4), history, the conversation snapshot,
and the ephemeral typing and presence state.

Rules of this file:

- The hot path (catch-up is bound by SQLite) sorts a page into parameter lists in one Python
  pass (:func:`sort_events`), then runs one ``executemany`` per statement kind inside the one
  transaction its caller opened (:func:`write_page`). No per-event SQL, no SELECT before an
  insert: ``ON CONFLICT`` decides repeats.
- One copy of each upsert: typing rows are built by :func:`typing_row` and stored by
  :func:`upsert_typing`, presence rows by :func:`presence_row` and :func:`upsert_presence`,
  a conversation's member rows by :func:`_set_members`, whether they come from the live
  channel or a snapshot.
- Every function takes a connection inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from syncengine.errors import UsageError
from syncengine.events import (
    ConversationUpdated,
    DurableEvent,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReactionChanged,
    ReadReceipt,
    ServerEvent,
    TypingStarted,
    TypingStopped,
    UnknownEvent,
    UserPresenceChanged,
)
from syncengine.models import PresenceStatus
from syncengine.store.outbox import OTHER_SEND_SQL, confirm_by_echo
from syncengine.store.queries import STREAM, read_cursor
from syncengine.store.unordered import set_token

__all__ = ["ApplyResult"]


class ApplyResult:
    """What :meth:`Store.apply_events` did: counts, and the own ops the page confirmed.

    ``confirmed_ops`` lists every own send the events carry; ``sent_ops`` only those whose
    outbox item this call moved to SENT (the echo came before the acknowledgement), so the
    engine reports each send exactly once, whichever of echo and ack comes first.
    """

    __slots__ = ("applied", "confirmed_ops", "cursor", "sent_ops", "unknown")

    def __init__(self) -> None:
        self.applied = 0
        self.unknown = 0
        self.cursor: int | str = 0
        self.confirmed_ops: list[str] = []
        self.sent_ops: list[str] = []


class SortedPage:
    """A page of events sorted into the parameter lists of :func:`write_page`."""

    __slots__ = (
        "convs",
        "deletes",
        "edits",
        "inserts",
        "own",
        "reactions",
        "reads_me",
        "reads_other",
        "replies",
        "result",
        "updates",
    )

    def __init__(self) -> None:
        self.result = ApplyResult()
        self.convs: dict[str, int] = {}
        self.inserts: list[tuple[Any, ...]] = []
        self.own: list[tuple[Any, ...]] = []
        self.edits: list[tuple[Any, ...]] = []
        self.deletes: list[tuple[Any, ...]] = []
        self.reads_me: list[tuple[Any, ...]] = []
        self.reads_other: list[tuple[Any, ...]] = []
        self.updates: list[ConversationUpdated] = []
        self.replies: list[tuple[str, str]] = []
        self.reactions: list[tuple[bool, str, str, str]] = []


def sort_events(events: Sequence[ServerEvent], me: str) -> SortedPage:
    """One pass over a page: each durable event becomes a row of parameters.

    Non-durable events are skipped (typing and presence go through :func:`apply_ephemeral`);
    unknown ones are counted.
    """
    page = SortedPage()
    result = page.result
    # Local names, not attribute lookups, inside the loop: it runs once per event.
    convs, inserts, own, confirmed = page.convs, page.inserts, page.own, result.confirmed_ops
    edits, deletes, updates = page.edits, page.deletes, page.updates
    reads_me, reads_other = page.reads_me, page.reads_other
    for ev in events:
        if isinstance(ev, DurableEvent):
            cid = ev.conversation_id
            if convs.get(cid, 0) < ev.seq:
                convs[cid] = ev.seq
            result.applied += 1
            if isinstance(ev, MessageReceived):
                created = ev.ts_ms / 1000
                inserts.append((cid, ev.seq, ev.message_id, ev.op_id, ev.sender, ev.body, created))
                if ev.op_id is not None and ev.sender == me:
                    own.append((ev.message_id, ev.seq, created, me, ev.op_id, ev.body))
                    confirmed.append(ev.op_id)
                if ev.reply_to is not None:
                    page.replies.append((ev.reply_to, ev.message_id))
            elif isinstance(ev, MessageUpdated):
                edits.append((ev.message_id, ev.body, ev.seq, ev.ts_ms / 1000))
            elif isinstance(ev, MessageDeleted):
                deletes.append((ev.message_id,))
            elif isinstance(ev, ConversationUpdated):
                updates.append(ev)
            elif isinstance(ev, ReactionChanged):
                page.reactions.append((ev.present, ev.message_id, ev.emoji, ev.user))
            elif isinstance(ev, ReadReceipt):
                if ev.user == me:
                    reads_me.append((ev.read_seq, cid))
                else:
                    reads_other.append((cid, ev.user, ev.read_seq))
        elif isinstance(ev, UnknownEvent):
            result.unknown += 1
    return page


def write_page(
    c: Any, page: SortedPage, now: float, *, cursor: int | str | None, synced: bool
) -> ApplyResult:
    """Write a sorted page, the cursor and ``last_sync_at`` (all in the caller's transaction)."""
    _write_messages(c, page, now)
    _write_conversations(c, page)
    result = page.result
    if result.unknown:
        c.execute(
            "INSERT INTO meta(key, value) VALUES ('unknown_events', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
            (result.unknown, result.unknown),
        )
    if cursor is not None:
        set_cursor(c, cursor, now)
    if synced:
        c.execute(
            "INSERT INTO meta(key, value) VALUES ('last_sync_at', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (repr(now),),
        )
    result.cursor = read_cursor(c)
    return result


def _write_messages(c: Any, page: SortedPage, now: float) -> None:
    if page.convs:
        c.executemany(
            "INSERT INTO conversations(id, created_at) VALUES (?, ?) ON CONFLICT(id) DO NOTHING",
            [(cid, now) for cid in page.convs],
        )
    if page.own:
        # Promote local echoes in place before inserting: the echo and the server copy must
        # end as one row (G4), whichever of ack and echo came first.
        # Only the echo of this very operation: an op id names one operation of one user,
        # so an echo whose send carries another body is another device's refused reuse of
        # the op id (the server answers it op_id_conflict), never this message.
        c.executemany(
            "UPDATE messages SET id = ?, seq = ?, state = 'sent', created_at = ? "
            "WHERE sender = ? AND op_id = ? AND id IS NULL AND NOT EXISTS ("
            f"{OTHER_SEND_SQL})",
            [(*o[:5], o[4], o[5]) for o in page.own],
        )
        # The server copy confirms the send; the sends it moved to SENT are reported.
        page.result.sent_ops += confirm_by_echo(c, [(o[4], o[5]) for o in page.own], now)
    if page.inserts:
        c.executemany(
            "INSERT INTO messages(conversation_id, seq, id, op_id, sender, body, state, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, 'sent', ?) ON CONFLICT DO NOTHING",
            page.inserts,
        )
    for present, *key in page.reactions:  # in event order: an add then a remove ends removed
        c.execute(
            "INSERT INTO reactions(message_id, emoji, user) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING"
            if present
            else "DELETE FROM reactions WHERE message_id = ? AND emoji = ? AND user = ?",
            key,
        )
    if page.replies:
        # After the inserts and promotions: the server's id of the replied-to message
        # replaces whatever a local echo held (the op id of a send still pending then).
        c.executemany("UPDATE messages SET reply_to = ? WHERE id = ?", page.replies)
    if page.edits:
        c.executemany(
            "INSERT INTO message_patches(message_id, body, edit_seq, edited_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(message_id) DO UPDATE SET "
            "body = excluded.body, edit_seq = excluded.edit_seq, "
            "edited_at = excluded.edited_at "
            "WHERE excluded.edit_seq > message_patches.edit_seq",
            page.edits,
        )
    if page.deletes:
        c.executemany(
            "INSERT INTO message_patches(message_id, deleted) VALUES (?, 1) "
            "ON CONFLICT(message_id) DO UPDATE SET deleted = 1",
            page.deletes,
        )


def _write_conversations(c: Any, page: SortedPage) -> None:
    for ev in page.updates:
        members = sorted(set(ev.members))
        cur = c.execute(
            "UPDATE conversations SET title = ?, members = ?, meta_seq = ?, pending = 0 "
            "WHERE id = ? AND meta_seq < ?",
            (
                ev.title,
                orjson.dumps(sorted(ev.members)).decode(),
                ev.seq,
                ev.conversation_id,
                ev.seq,
            ),
        )
        if cur.rowcount:
            _set_members(c, ev.conversation_id, members)
    if page.reads_me:
        c.executemany(
            "UPDATE conversations SET read_seq = MAX(read_seq, ?) WHERE id = ?", page.reads_me
        )
    if page.reads_other:
        c.executemany(
            "INSERT INTO reads(conversation_id, user, read_seq) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)",
            page.reads_other,
        )
    if page.convs:
        c.executemany(
            "UPDATE conversations SET last_seq = MAX(last_seq, ?) WHERE id = ?",
            [(seq, cid) for cid, seq in page.convs.items()],
        )


def _set_members(c: Any, cid: str, members: Sequence[str]) -> None:
    """Make the member rows of ``cid`` exactly ``members`` (sorted, unique)."""
    c.execute("DELETE FROM members WHERE conversation_id = ?", (cid,))
    c.executemany(
        "INSERT INTO members(conversation_id, user) VALUES (?, ?)", [(cid, m) for m in members]
    )


def set_meta(c: Any, values: dict[str, str | None]) -> None:
    """Set (or, with None, delete) ``meta`` values."""
    for key, value in values.items():
        if value is None:
            c.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )


def quarantine(c: Any, raw: str, error: str, pos: int | None, now: float) -> None:
    """Keep a poison event (decoded, but not applicable) for inspection, truncated."""
    c.execute(
        "INSERT INTO quarantine(pos, raw, error, at) VALUES (?, ?, ?, ?)",
        (pos, raw[:65536], error[:1000], now),
    )


def set_cursor(c: Any, pos: int | str, now: float, *, force: bool = False) -> None:
    """Move the cursor to ``pos``: only forward unless ``force`` (a resync)."""
    if isinstance(pos, str):  # an opaque token (Matrix): its own column, no order to guard
        set_token(c, pos, now)
        return
    guard = "" if force else " WHERE excluded.pos > cursors.pos"
    c.execute(
        "INSERT INTO cursors(stream, pos, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(stream) DO UPDATE SET pos = excluded.pos, "
        f"updated_at = excluded.updated_at{guard}",
        (STREAM, pos, now),
    )


def history_events(messages: Sequence[Any]) -> list[ServerEvent]:
    """History messages (``wire.HistoryMessage``) as the events that store them."""
    events: list[ServerEvent] = []
    for m in messages:
        cid, seq, ts_ms, mid = m.conversation_id, m.seq, m.ts_ms, m.message_id
        events.append(
            MessageReceived(
                pos=0,
                conversation_id=cid,
                seq=seq,
                ts_ms=ts_ms,
                message_id=mid,
                op_id=m.op_id,
                sender=m.sender,
                body=m.body,
            )
        )
        if m.deleted:
            events.append(
                MessageDeleted(
                    pos=0, conversation_id=cid, seq=seq, ts_ms=ts_ms, message_id=mid, deleted_by=""
                )
            )
        elif m.edited_ms is not None:
            # The history copy carries the current body; seq 0 keeps any newer edit.
            events.append(
                MessageUpdated(
                    pos=0,
                    conversation_id=cid,
                    seq=0,
                    ts_ms=m.edited_ms,
                    message_id=mid,
                    body=m.body,
                    editor=m.sender,
                )
            )
    return events


def replace_conversations(
    c: Any, conversations: Sequence[dict[str, Any]], me: str, now: float
) -> None:
    """Make titles and members match a server snapshot (see ``Store.replace_conversations``)."""
    seen = set()
    for conv in conversations:
        cid = conv["id"]
        seen.add(cid)
        members = sorted(set(conv.get("members", [])))
        # The snapshot is the state at its last_seq. A conversation_updated already stored
        # with a higher seq (the live channel ran while the snapshot was on its way) is newer:
        # keep it, or the replay from the snapshot's head would be refused by the meta_seq
        # guard and the older title/members would stick.
        cur = c.execute(
            "INSERT INTO conversations(id, title, members, meta_seq, last_seq, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "title = excluded.title, members = excluded.members, "
            "meta_seq = excluded.meta_seq "
            "WHERE excluded.meta_seq >= conversations.meta_seq",
            (
                cid,
                conv.get("title", ""),
                orjson.dumps(members).decode(),
                conv.get("last_seq", 0),
                0,
                now,
            ),
        )
        # The user's own read position may have moved on another device meanwhile.
        c.execute(
            "UPDATE conversations SET pending = 0, read_seq = MAX(read_seq, ?) WHERE id = ?",
            (int(conv.get("read_seq", 0) or 0), cid),
        )
        if cur.rowcount:
            _set_members(c, cid, members)
    for (cid,) in c.execute("SELECT id FROM conversations WHERE pending = 0").fetchall():
        if cid not in seen:
            c.execute("DELETE FROM members WHERE conversation_id = ? AND user = ?", (cid, me))


# --- ephemeral state: one upsert each --------------------------------------------------------

_TYPING_UPSERT = (
    "INSERT INTO typing(conversation_id, user, expires_at, ts_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO UPDATE SET expires_at = excluded.expires_at, ts_ms = excluded.ts_ms "
    "WHERE excluded.ts_ms >= typing.ts_ms"
)

_PRESENCE_UPSERT = (
    "INSERT INTO presence(user, status, last_seen, ts_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(user) DO UPDATE SET status = excluded.status, "
    "last_seen = COALESCE(excluded.last_seen, presence.last_seen), "
    "ts_ms = excluded.ts_ms WHERE excluded.ts_ms >= presence.ts_ms"
)


def typing_row(
    conversation_id: str, user: str, typing: bool, ts_ms: int, ttl_s: float, now: float
) -> tuple[str, str, float, int]:
    """The typing row for a start (or a stop) received at ``now``.

    The expiry is taken on the local clock at receipt (``now + ttl_s``), so a skewed server
    clock cannot keep an indicator on; a stop expires at once.
    """
    return (conversation_id, user, now + ttl_s if typing else 0.0, ts_ms)


def upsert_typing(c: Any, rows: Sequence[tuple[str, str, float, int]]) -> int:
    """Store typing rows, each only if not older (server ``ts_ms``) than the stored one.

    Returns how many rows changed.
    """
    return int(c.executemany(_TYPING_UPSERT, rows).rowcount)


# A dict lookup, not ``PresenceStatus(value)``: the live path converts one per event.
_PRESENCE_STATUSES = {s.value: s.value for s in PresenceStatus}


def presence_row(
    user: str, status: str, ts_ms: int, last_seen_ms: int | None
) -> tuple[str, str, float | None, int]:
    """The presence row for a change.

    Raises:
        UsageError: ``status`` is not one of :class:`PresenceStatus`.
    """
    stored = _PRESENCE_STATUSES.get(status) if isinstance(status, str) else None
    if stored is None:
        raise UsageError(f"unknown presence status {status!r}")
    return (user, stored, last_seen_ms / 1000 if last_seen_ms is not None else None, ts_ms)


def upsert_presence(c: Any, rows: Sequence[tuple[str, str, float | None, int]]) -> int:
    """Store presence rows, each only if not older (server ``ts_ms``) than the stored one; a
    row without ``last_seen`` keeps the stored one. Returns how many rows changed."""
    return int(c.executemany(_PRESENCE_UPSERT, rows).rowcount)


def clear_typing(c: Any) -> None:
    """Forget every typing indicator."""
    c.execute("DELETE FROM typing")


def prune_typing(c: Any, now: float) -> int:
    """Delete typing rows expired at ``now``; returns how many."""
    return int(c.execute("DELETE FROM typing WHERE expires_at <= ?", (now,)).rowcount)


def apply_ephemeral(
    c: Any, events: Sequence[ServerEvent], me: str, now: float
) -> list[ServerEvent]:
    """The live path for typing and presence; returns the events less the refused ones.

    Rows are built in one pass and stored with one ``executemany`` per table (the order
    within each table is kept, and the two tables are independent).
    """
    kept: list[ServerEvent] = []
    typing_rows: list[tuple[str, str, float, int]] = []
    presence_rows: list[tuple[str, str, float | None, int]] = []
    for ev in events:
        if isinstance(ev, TypingStarted):
            if ev.user != me:  # our own start is never shown, so it is not stored either
                ttl_s = ev.ttl_ms / 1000
                typing_rows.append(
                    typing_row(ev.conversation_id, ev.user, True, ev.ts_ms, ttl_s, now)
                )
        elif isinstance(ev, TypingStopped):
            typing_rows.append(typing_row(ev.conversation_id, ev.user, False, ev.ts_ms, 0.0, now))
        elif isinstance(ev, UserPresenceChanged):
            try:
                presence_rows.append(presence_row(ev.user, ev.status, ev.ts_ms, ev.last_seen_ms))
            except UsageError:
                continue  # an unknown status from the server: dropped, not shown
        kept.append(ev)
    if typing_rows:
        upsert_typing(c, typing_rows)
    if presence_rows:
        upsert_presence(c, presence_rows)
    return kept
