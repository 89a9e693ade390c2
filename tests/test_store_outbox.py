"""The store's outbox moves against the transition table.

The table is ``OUTBOX_TRANSITIONS`` in ``syncengine/core/sync.py``; the store imports it. Every
move the table does not list gets its own test case, computed from the table, so a row added
or removed there changes the cases here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncengine.core.sync import OUTBOX_TRANSITIONS
from syncengine.errors import UsageError
from syncengine.models import OutboxState
from syncengine.store import IllegalOutboxMove, Store
from syncengine.store import outbox as store_outbox
from syncengine.wire import OpResult
from tests.helpers_store import Clock, conv_updated, open_store

CID = "conv-a"
S = OutboxState

#: Every (old, new) pair of different states the table does not allow.
FORBIDDEN = [
    (old, new)
    for old in OutboxState
    for new in OutboxState
    if old is not new and (old, new) not in OUTBOX_TRANSITIONS
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "sync.db", clock=Clock())
    s.apply_events([conv_updated(CID, 1, 1)], cursor=1)
    yield s
    s.close()


def _ack(op_id: str, seq: int = 2) -> OpResult:
    return OpResult(
        op_id=op_id, status="applied", conversation_id=CID, message_id=f"srv-{op_id}", seq=seq
    )


def item_in(store: Store, state: OutboxState) -> str:
    """A send whose outbox item is in ``state``, reached by legal moves only."""
    op_id = store.enqueue("send", CID, {"body": f"to be {state.value}"})[0].op_id
    if state is S.PENDING:
        return op_id
    assert [i.op_id for i in store.claim()] == [op_id]
    if state is S.SENT:
        assert store.mark_sent(_ack(op_id))
    elif state is S.FAILED:
        assert store.mark_failed(op_id, "invalid", "refused")
    return op_id


def state_of(store: Store, op_id: str) -> OutboxState:
    item = store.outbox_item(op_id)
    assert item is not None
    return item.state


def snapshot(store: Store) -> list[tuple[Any, ...]]:
    """Every outbox and message row: what a refused move must leave as it was."""
    conn = sqlite3.connect(store.path)
    try:
        return (
            conn.execute("SELECT * FROM outbox ORDER BY n").fetchall()
            + conn.execute("SELECT * FROM messages ORDER BY local_id").fetchall()
        )
    finally:
        conn.close()


# --- the table itself ----------------------------------------------------------------------


def test_the_forbidden_moves_are_the_complement_of_the_table() -> None:
    # Four states, twelve moves between different states; the table allows six today.
    assert len(FORBIDDEN) + len(OUTBOX_TRANSITIONS) == 12
    assert (S.PENDING, S.FAILED) in FORBIDDEN  # mark_failed used to make it in SQL
    assert (S.FAILED, S.SENT) in FORBIDDEN  # so did an acknowledgement of a FAILED item
    assert (S.SENT, S.FAILED) in FORBIDDEN


def test_allowed_moves_give_their_reason() -> None:
    for (old, new), reason in OUTBOX_TRANSITIONS.items():
        assert store_outbox.check_move(old, new) == reason


def test_the_echo_confirms_from_the_states_the_table_allows() -> None:
    assert set(store_outbox.sources(S.SENT)) == {S.PENDING, S.SENDING}
    assert store_outbox.ECHO_SOURCES_SQL == "'pending', 'sending'"


def test_illegal_outbox_move_is_a_usage_error() -> None:
    exc = IllegalOutboxMove("op-1", S.SENT, S.FAILED)
    assert isinstance(exc, UsageError)
    assert (exc.op_id, exc.old, exc.new) == ("op-1", S.SENT, S.FAILED)
    assert "sent -> failed" in str(exc)


# --- one test per forbidden move ------------------------------------------------------------


def _attempt(store: Store, op_id: str, new: OutboxState) -> Callable[[], object] | None:
    """The store call that asks this one item to move to ``new`` (None: no call names an
    item for that move; claim chooses its items by state)."""
    return {
        S.PENDING: lambda: store.requeue([op_id]),
        S.SENT: lambda: store.mark_sent(_ack(op_id, seq=9)),
        S.FAILED: lambda: store.mark_failed(op_id, "invalid", "late rejection"),
        S.SENDING: None,
    }[new]


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=lambda s: s.value)
def test_forbidden_move_is_refused(store: Store, old: OutboxState, new: OutboxState) -> None:
    with pytest.raises(IllegalOutboxMove) as info:
        store_outbox.check_move(old, new, "op-x")
    assert (info.value.old, info.value.new, info.value.op_id) == (old, new, "op-x")

    op_id = item_in(store, old)
    before = snapshot(store)
    attempt = _attempt(store, op_id, new)
    if attempt is None:
        assert store.claim() == []  # never taken for a push again
    else:
        with pytest.raises(IllegalOutboxMove) as raised:
            attempt()
        assert (raised.value.op_id, raised.value.old, raised.value.new) == (op_id, old, new)
    assert snapshot(store) == before
    assert state_of(store, op_id) is old


def test_a_refused_ack_keeps_nothing_of_its_batch(store: Store) -> None:
    failed = item_in(store, S.FAILED)
    other = store.enqueue("send", CID, {"body": "in flight"})[0].op_id
    store.claim()
    before = snapshot(store)
    with pytest.raises(IllegalOutboxMove):
        store.mark_sent_many([_ack(other, seq=3), _ack(failed, seq=4)])
    assert snapshot(store) == before
    assert state_of(store, other) is S.SENDING


def test_moves_in_their_own_state_are_not_moves(store: Store) -> None:
    sent = item_in(store, S.SENT)
    assert not store.mark_sent(_ack(sent))  # a replayed ack: False, nothing refused
    failed = item_in(store, S.FAILED)
    assert not store.mark_failed(failed, "invalid", "again")
    assert not store.mark_failed("no-such-op", "invalid", "x")


def test_requeue_of_an_item_not_failed_stays_a_usage_error(store: Store) -> None:
    pending = item_in(store, S.PENDING)
    with pytest.raises(UsageError, match="is pending, not failed") as info:
        store.requeue([pending])
    assert not isinstance(info.value, IllegalOutboxMove)  # no move asked: it is there already


def test_batch_moves_leave_settled_items_alone(store: Store) -> None:
    # The live channel may confirm an item while its push fails: the retry must not undo it.
    sent, failed = item_in(store, S.SENT), item_in(store, S.FAILED)
    store.mark_retry([sent, failed], "timeout", 0.0)
    assert store.recover_sending() == 0
    assert (state_of(store, sent), state_of(store, failed)) == (S.SENT, S.FAILED)
