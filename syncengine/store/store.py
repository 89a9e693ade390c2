"""The ``Store`` facade: the local store's public API, one transaction per call.

The work is done by the modules beside it (details in docs/store.md); this class opens the
transaction, passes the user and the clock, and keeps every public method the engine, the
CLI and the daemon call.

- ``outbox.py``: enqueue and the push side; every state move checked against the outbox
  transition table (G1 durable accept: the row and its local echo in one ``BEGIN IMMEDIATE``
  transaction under ``synchronous=FULL``).
- ``apply.py``: server events, history, the conversation snapshot, typing and presence
  (G3 events and cursor in one transaction; G4 idempotent merge, one upsert each).
- ``queries.py``: reads and the health report.
- ``validate.py``: an operation's checks before anything is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from syncengine.errors import UsageError
from syncengine.events import ServerEvent
from syncengine.models import (
    ConnectionState,
    Conversation,
    Message,
    OpKind,
    OutboxItem,
    OutboxState,
    Presence,
    SyncHealth,
    Typing,
)
from syncengine.protocol.ops import MAX_BODY_CHARS, MAX_TITLE_CHARS
from syncengine.store import apply, outbox, queries, unordered
from syncengine.store.apply import ApplyResult
from syncengine.store.chatops import ChatQueries
from syncengine.store.db import StoreDB
from syncengine.store.outbox import SENDING_LEASE_S, IllegalOutboxMove
from syncengine.store.queries import STREAM
from syncengine.wire import OpResult

__all__ = [
    "MAX_BODY_CHARS",
    "MAX_TITLE_CHARS",
    "SENDING_LEASE_S",
    "STREAM",
    "ApplyResult",
    "IllegalOutboxMove",
    "Store",
]

T = TypeVar("T")


class Store(ChatQueries):
    """The local SQLite store of one account.

    Args:
        path: the database file; created 0600 (each new folder 0700) if missing.
        user: the local user's name, once known (needed to recognise own echoes). It is
            persisted in ``meta`` by :meth:`set_account`, so later opens can omit it.
        busy_timeout_s: how long a write waits for another process's lock before
            :class:`~syncengine.errors.StoreLocked`.
        clock: the time source, in seconds (tests pass a settable one).

    Raises:
        StoreCorrupt: the file is damaged or not a database (it is left in place).
        SchemaTooNew: the file was written by a newer syncengine.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        user: str | None = None,
        busy_timeout_s: float = 5.0,
        clock: Any = time.time,
    ) -> None:
        self._db = StoreDB(path, busy_timeout_s=busy_timeout_s)
        self.path = self._db.path
        self._clock = clock
        self.user = user or self.get_meta("user") or ""

    def _read(self, query: Callable[..., T], *args: Any) -> T:
        with self._db.read() as c:
            return query(c, *args)

    def _write(self, change: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._db.write() as c:
            return change(c, *args, **kwargs)

    # --- housekeeping -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. The store object must not be used afterwards."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema(self) -> list[str]:
        """Migrations applied to this file, oldest first."""
        return self._db.schema

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` (``"ok"`` when healthy)."""
        return self._db.integrity_check()

    def checkpoint(self) -> None:
        """Fold the WAL into the main file."""
        self._db.checkpoint()

    def set_max_page_count(self, pages: int) -> None:
        """Cap the file size (``PRAGMA max_page_count``): used to simulate a full disk."""
        with self._db.lock:
            self._db.conn.execute(f"PRAGMA max_page_count = {int(pages)}")

    def page_count(self) -> int:
        """The file's size in pages (``PRAGMA page_count``)."""
        with self._db.read() as c:
            return int(c.execute("PRAGMA page_count").fetchone()[0])

    # --- meta and account -------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A value from the ``meta`` table, or None."""
        return self._read(queries.get_meta, key)

    def set_meta(self, **values: str | None) -> None:
        """Set (or, with None, delete) ``meta`` values in one transaction."""
        self._write(apply.set_meta, values)

    def set_account(self, *, server: str, user: str, device: str) -> None:
        """Record which account this store belongs to.

        Raises:
            UsageError: the store already belongs to another user or server (one store per
                account: mixing would show one user's messages to another).
        """
        old_user, old_server = self.get_meta("user"), self.get_meta("server")
        if old_user and (old_user != user or (old_server and old_server != server)):
            raise UsageError(
                f"{self.path} belongs to {old_user} on {old_server}; use another --db for "
                f"{user} on {server}"
            )
        self.set_meta(server=server, user=user, device=device)
        self.user = user

    def account(self) -> dict[str, str | None]:
        """``server``, ``user`` and ``device`` of this store (None when not logged in)."""
        return {k: self.get_meta(k) for k in ("server", "user", "device")}

    def set_state(self, state: ConnectionState, **health: str | None) -> None:
        """Record the connection state (and ``health`` meta values) for ``syncengine status``."""
        self.set_meta(state=state.value, state_at=repr(self._clock()), **health)

    # --- the outbox (outbox.py) ---------------------------------------------------------------

    def enqueue(
        self,
        kind: OpKind | str,
        conversation_id: str,
        payload: dict[str, Any] | None = None,
        *,
        op_id: str | None = None,
    ) -> tuple[OutboxItem, bool]:
        """Queue an operation durably and show its local effect at once (G1).

        Returns ``(item, created)``: with an ``op_id`` already queued, that item and False.

        Raises:
            UsageError: an invalid payload (empty or too long body, bad seq, ...).
            NotFound: the conversation or target message is not in the store.
            StoreError: the write failed; nothing was queued.
        """
        kind, payload, op_id = outbox.prepare(kind, conversation_id, payload, op_id, self._clock)
        if not self.user:
            raise UsageError("the store has no account: log in first")
        return self._write(
            outbox.enqueue, self.user, kind, conversation_id, payload, op_id, self._clock()
        )

    def claim(self, limit: int = 500, *, now: float | None = None) -> list[OutboxItem]:
        """Take up to ``limit`` operations for pushing and mark them SENDING, FIFO per
        conversation: an item waiting for its backoff or in flight holds back the later items
        of its conversation (an edit never overtakes its send), a FAILED item holds back
        nothing, and a SENDING item whose lease ran out (its claimer died) is claimable again.
        """
        if limit < 1:
            return []  # the scan would take one before checking the limit
        now = self._clock() if now is None else now
        return self._write(outbox.claim, limit, now)

    def mark_sent(self, result: OpResult) -> bool:
        """Record the server's acknowledgement of one operation.

        For a send, the local echo becomes the server copy (server id and seq) in place; if the
        server copy was already stored by the live channel or a pull, nothing is duplicated.
        Returns True when this call moved the item to SENT (False if it already was).

        Raises:
            IllegalOutboxMove: the item is FAILED; nothing was written.
        """
        return self.mark_sent_many([result])[0]

    def mark_sent_many(self, results: Sequence[OpResult]) -> list[bool]:
        """:meth:`mark_sent` for a whole push batch, in one transaction (one commit, not one
        per operation). Returns, for each result, whether this call moved its item to SENT.

        Raises:
            IllegalOutboxMove: one item is FAILED; nothing of the batch was written.
        """
        return self._write(outbox.mark_sent_many, self.user, results, self._clock())

    def mark_failed(self, op_id: str, code: str, reason: str) -> bool:
        """Park one SENDING operation as FAILED (a permanent rejection); others keep flowing.
        True when this call moved it, False when the op id is unknown or already FAILED.

        Raises:
            IllegalOutboxMove: the item is PENDING or SENT (the transition table has no such
                move); nothing was written.
        """
        return self._write(outbox.mark_failed, self.user, op_id, code, reason, self._clock())

    def mark_retry(self, op_ids: Iterable[str], error: str, next_attempt_at: float) -> None:
        """Return SENDING operations to PENDING after a transient failure, with a backoff.

        Items no longer SENDING (confirmed by the live channel meanwhile) are left alone.
        """
        self._write(outbox.mark_retry, op_ids, error, next_attempt_at, self._clock())

    def requeue(self, op_ids: Iterable[str] | None = None) -> list[str]:
        """Move FAILED operations back to PENDING (all of them when ``op_ids`` is None).

        Raises:
            NotFound: an op id that is not in the outbox.
            UsageError: an op id whose item is not FAILED (:class:`IllegalOutboxMove` when
                the item is SENT); nothing was requeued.
        """
        return self._write(outbox.requeue, self.user, op_ids, self._clock())

    def recover_sending(self) -> int:
        """At start-up of the syncing process: items left SENDING by a crash become PENDING,
        to be pushed again with the same op id, deduplicated by the server (G2). Returns how
        many were recovered."""
        return self._write(outbox.recover_sending, self._clock())

    def outbox(
        self, state: OutboxState | str | None = None, *, limit: int = 1000
    ) -> list[OutboxItem]:
        """Outbox items, oldest first, optionally of one state."""
        return self._read(outbox.items, state, limit)

    def outbox_item(self, op_id: str) -> OutboxItem | None:
        """One outbox item by op id, or None."""
        return self._read(outbox.item, op_id)

    def next_attempt_at(self) -> float | None:
        """When the earliest backing-off pending item becomes due (None if none waits)."""
        return self._read(outbox.next_attempt_at)

    def due_count(self, now: float) -> int:
        """How many PENDING operations are due for a push at ``now`` (cheap, read-only)."""
        return self._read(outbox.due_count, now)

    def prune_sent(self, older_than_s: float = 7 * 86400) -> int:
        """Delete SENT outbox rows older than ``older_than_s``; returns how many."""
        return self._write(outbox.prune_sent, self._clock() - older_than_s)

    # --- applying what the server says (apply.py) ---------------------------------------------

    def cursor(self) -> int | str:
        """The persisted stream position: every event up to it is stored."""
        return self._read(queries.read_cursor)

    def reset_cursor(self, pos: int | str) -> None:
        """Set the cursor to ``pos``, even backwards (only a resync does this)."""
        self._write(apply.set_cursor, pos, self._clock(), force=True)

    def apply_events(
        self,
        events: Sequence[ServerEvent],
        *,
        cursor: int | str | None = None,
        synced: bool = False,
        backward: bool = False,
    ) -> ApplyResult:
        """Apply durable server events, and advance the cursor, in one transaction.

        Events may repeat or come in any order; the resulting state is the same (G4). With
        ``cursor`` the stream position moves to it (never backwards) in the same transaction
        (G3). ``synced`` records ``last_sync_at`` too (the catch-up reached the end).
        Events without a seq (Matrix) get one from the store (``store/unordered.py``), in
        delivery order, or counting down with ``backward`` (history paged back).
        Non-durable events in ``events`` are ignored here (see :meth:`apply_ephemeral`).
        """
        if unordered.needs_numbering(events):
            return self._write(_apply_numbered, events, self, cursor, synced, backward)
        page = apply.sort_events(events, self.user)
        return _apply_pulled(self, page, cursor, synced)

    def quarantine(self, raw: str, error: str, pos: int | None = None) -> None:
        """Keep an event that could not be applied (a poison event) for inspection."""
        self._write(apply.quarantine, raw, error, pos, self._clock())

    def quarantined(self) -> list[dict[str, Any]]:
        """Quarantined events, oldest first."""
        return self._read(queries.quarantined)

    def apply_history(self, messages: Sequence[Any]) -> int:
        """Store history messages (``wire.HistoryMessage``) with the merge rules of
        :meth:`apply_events`, the cursor unmoved. Returns how many were given."""
        self.apply_events(apply.history_events(messages), backward=True)
        return len(messages)

    def authoritative(self, change: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``change`` (of :mod:`syncengine.store.authority`) in one write transaction."""
        return self._write(change, *args, **kw)

    def replace_conversations(self, conversations: Sequence[dict[str, Any]]) -> None:
        """Resync: make the conversation list (titles, members) match a server snapshot.
        Conversations absent from it keep their messages but lose this user from their members
        (so :meth:`conversations` omits them); ones pending creation are left alone."""
        self._write(apply.replace_conversations, conversations, self.user, self._clock())

    # --- ephemeral state (one upsert each, in apply.py) ---------------------------------------

    def apply_typing(
        self, conversation_id: str, user: str, *, typing: bool, ts_ms: int, ttl_s: float = 8.0
    ) -> bool:
        """Record someone typing (or stopping), ordered by the server's ``ts_ms``.

        The expiry is computed on the local clock from the time of receipt, so a skewed
        clock cannot keep an indicator on. Returns True when the row changed.
        """
        row = apply.typing_row(conversation_id, user, typing, ts_ms, ttl_s, self._clock())
        return self._write(apply.upsert_typing, [row]) > 0

    def clear_typing(self) -> None:
        """Forget every typing indicator (on disconnect: a lost stop must not stick)."""
        self._write(apply.clear_typing)

    def prune_typing(self) -> int:
        """Delete expired typing rows; returns how many."""
        return self._write(apply.prune_typing, self._clock())

    def typing(self, conversation_id: str) -> list[Typing]:
        """Who is typing in a conversation now (expired entries hidden, own excluded)."""
        return self._read(queries.typing, conversation_id, self.user, self._clock())

    def apply_presence(
        self, user: str, status: str, *, ts_ms: int, last_seen_ms: int | None = None
    ) -> bool:
        """Record a presence change, ordered by the server's ``ts_ms``. True when it changed.

        Raises:
            UsageError: ``status`` is not one of :class:`PresenceStatus`.
        """
        row = apply.presence_row(user, status, ts_ms, last_seen_ms)  # refused before writing
        return self._write(apply.upsert_presence, [row]) > 0

    def apply_ephemeral(self, events: Sequence[ServerEvent]) -> list[ServerEvent]:
        """Record a batch of typing and presence events in one transaction (the live path).

        Returns the events less those refused (a presence with an unknown status); others
        (unknown types) are kept and not stored."""
        return self._write(apply.apply_ephemeral, events, self.user, self._clock())

    def presence(self, user: str) -> Presence | None:
        """A user's last known presence, or None if never seen."""
        return self._read(queries.presence_of, user)

    def all_presence(self) -> list[Presence]:
        """Every known presence, by user name."""
        return self._read(queries.presence_all)

    # --- reads (queries.py) -------------------------------------------------------------------

    def conversations(self) -> list[Conversation]:
        """The conversations this user is a member of, with unread counts, newest activity first."""
        return self._read(queries.conversations, self.user)

    def conversation(self, conversation_id: str) -> Conversation:
        """One conversation. Raises NotFound."""
        return self._read(queries.conversation, self.user, conversation_id)

    def has_conversation(self, conversation_id: str) -> bool:
        """Whether the conversation is in the store (even one this user has left)."""
        return self._read(queries.has_conversation, conversation_id)

    def messages(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[Message]:
        """A page of messages, oldest first.

        Server messages are ordered by seq. Without ``before`` the page is the newest
        ``limit`` server messages followed by the local echoes still pending or failed, in
        send order (they sit after the last server message, never interleaved by clock).
        """
        return self._read(queries.messages, conversation_id, before, limit, self.user)

    def page(
        self, conversation_id: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[Message], int | None, bool]:
        """``(messages, lowest stored seq, history complete)`` from one read transaction, as
        :meth:`messages`, :meth:`lowest_seq` and :meth:`history_complete` would answer.

        Raises:
            NotFound: the conversation is not in the store.
        """
        return self._read(queries.page, conversation_id, before, limit, self.user)

    def message_by_op(self, op_id: str) -> Message | None:
        """This user's message created by send operation ``op_id`` (echo or server copy)."""
        return self._read(queries.message_by_op, self.user, op_id)

    def event_id_at(self, conversation_id: str, seq: int) -> str | None:
        """The server id of the newest named event at or below ``seq`` (Matrix receipts)."""
        return self._read(unordered.event_id_at, conversation_id, seq)

    def message_event_id(self, op_id: str) -> str | None:
        """The server id of this user's message sent with ``op_id`` (None: not yet known)."""
        return self._read(unordered.message_event_id, self.user, op_id)

    def message_count(self, conversation_id: str | None = None) -> int:
        """How many messages are stored (in one conversation, or in all)."""
        return self._read(queries.message_count, conversation_id)

    def lowest_seq(self, conversation_id: str) -> int | None:
        """The smallest server seq stored for a conversation (None if none)."""
        return self._read(queries.lowest_seq, conversation_id)

    def history_complete(self, conversation_id: str) -> bool:
        """True once back-pagination reached the server's end of history."""
        return self.get_meta(f"eoh:{conversation_id}") == "1"

    def set_history_complete(self, conversation_id: str) -> None:
        """Record that back-pagination reached the server's end of history."""
        self.set_meta(**{f"eoh:{conversation_id}": "1"})

    def health(self, *, open_gaps: int | None = None) -> SyncHealth:
        """The sync-health summary, derived from the store, never from a flag.

        Args:
            open_gaps: seq gaps the caller's sync protocol has detected and not yet filled.
                Only the syncing process knows them (they are not stored); without it the
                report says 0.
        """
        now = self._clock()
        return self._read(queries.health, now, open_gaps)


def _apply_numbered(
    c: Any, events: Sequence[ServerEvent], store: Store, cursor: Any, synced: bool, backward: bool
) -> ApplyResult:
    """Number events that have no seq, then apply them, in the one write transaction."""
    numbered = unordered.number_events(c, events, backward=backward)
    page = apply.sort_events(numbered, store.user)
    return apply.write_page(c, page, store._clock(), cursor=cursor, synced=synced)


def known_seqs(store: Store) -> dict[str, int]:
    """The highest stored seq of each of :meth:`Store.conversations` (no unread counts)."""
    return store._read(queries.known_seqs, store.user)


def quick_check(store: Store) -> str:
    """``PRAGMA quick_check`` (``"ok"`` when healthy): pages and b-trees, not index contents."""
    return store._db.integrity_check(quick=True)


def _apply_pulled(store: Store, page: Any, cursor: Any, synced: bool) -> ApplyResult:
    """Commit a sorted page with its cursor, without an fsync: everything in it is on the
    server and is pulled again if a power loss undoes the commit (G3, docs/store.md)."""
    with store._db.write(replayable=True) as c:
        return apply.write_page(c, page, store._clock(), cursor=cursor, synced=synced)
