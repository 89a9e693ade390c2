"""The local store on real SQLite files: durable outbox (G1), atomic catch-up (G3), idempotent
merge by example (G4; the property test is in test_store_properties.py), reads, file modes,
schema and migrations, corruption and locking."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from syncengine.errors import (
    NotFound,
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    UsageError,
)
from syncengine.events import MessageReceived, UnknownEvent
from syncengine.models import (
    ConnectionState,
    MessageState,
    OpKind,
    OutboxState,
    PresenceStatus,
)
from syncengine.store import MAX_BODY_CHARS, Store, authority, move_aside
from syncengine.store import apply as store_apply
from syncengine.store.outbox import SENDING_LEASE_S
from syncengine.store.schema import SCHEMA_NAMES
from syncengine.wire import HistoryMessage, OpResult
from tests.helpers_store import (
    ME,
    PYTHON,
    REPO,
    Clock,
    conv_updated,
    deleted,
    file_mode,
    open_store,
    receipt,
    received,
    updated,
)

CID = "conv-a"
CID_B = "conv-b"
SCHEMAS = REPO / "tests" / "data" / "schemas"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "sync.db"


@pytest.fixture
def store(db_path: Path, clock: Clock) -> Any:
    s = open_store(db_path, clock=clock)
    s.apply_events([conv_updated(CID, 1, 1), conv_updated(CID_B, 1, 2)], cursor=2)
    yield s
    s.close()


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, independent connection to the file (what another process would see)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def counts(path: Path) -> tuple[int, int, int, int]:
    with raw(path) as c:
        return tuple(  # type: ignore[return-value]
            c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("outbox", "messages", "conversations", "message_patches")
        )


def send(store: Store, body: str = "hello", cid: str = CID, op_id: str | None = None) -> str:
    item, created = store.enqueue(OpKind.SEND, cid, {"body": body}, op_id=op_id)
    assert created
    return item.op_id


def ack(op_id: str, seq: int, mid: str | None = None, cid: str = CID, ts_ms: int = 0) -> OpResult:
    return OpResult(
        op_id=op_id,
        status="applied",
        conversation_id=cid,
        message_id=mid or f"srv-{op_id}",
        seq=seq,
        pos=100 + seq,
        ts_ms=ts_ms or 1_000 * seq,
    )


# --- G1: durable accept ------------------------------------------------------------------


def test_wal_and_synchronous_full_are_set(store: Store) -> None:
    conn = store._db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_enqueue_is_visible_to_another_connection_and_process_when_it_returns(
    store: Store, db_path: Path
) -> None:
    op_id = send(store, "durable?")
    # Another connection in this process, while the store is still open:
    with raw(db_path) as c:
        row = c.execute("SELECT state, payload FROM outbox WHERE op_id = ?", (op_id,)).fetchone()
        echo = c.execute("SELECT body, state FROM messages WHERE op_id = ?", (op_id,)).fetchone()
    assert row == ("pending", '{"body":"durable?"}')
    assert echo == ("durable?", "pending")
    # And another process:
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute('SELECT COUNT(*) FROM outbox WHERE op_id = ?', (sys.argv[2],))"
        ".fetchone()[0])"
    )
    out = subprocess.run(
        [PYTHON, "-c", script, str(db_path), op_id], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "1", out.stderr


def test_same_op_id_twice_returns_the_existing_row(store: Store, db_path: Path) -> None:
    first, created = store.enqueue("send", CID, {"body": "one"}, op_id="op-1")
    assert created
    before = counts(db_path)
    again, created_again = store.enqueue("send", CID, {"body": "one"}, op_id="op-1")
    assert not created_again
    assert again == first
    # Even with another payload, the op id wins: the original row, no second echo.
    other, created_other = store.enqueue("send", CID, {"body": "two"}, op_id="op-1")
    assert not created_other and other.payload == {"body": "one"}
    assert counts(db_path) == before
    assert [m.body for m in store.messages(CID)] == ["one"]


def test_same_op_id_after_the_sent_row_was_pruned(store: Store, clock: Clock) -> None:
    op_id = send(store, "long ago")
    store.claim()
    store.mark_sent(ack(op_id, 2))
    clock.advance(8 * 86400)
    assert store.prune_sent() == 1
    item, created = store.enqueue("send", CID, {"body": "long ago"}, op_id=op_id)
    assert not created and item.state is OutboxState.SENT
    assert store.outbox() == [] and store.message_count(CID) == 1


def test_local_echo_appears_at_once_as_pending(store: Store, clock: Clock) -> None:
    op_id = send(store, "hi there")
    [echo] = store.messages(CID)
    assert echo.state is MessageState.PENDING
    assert (echo.id, echo.seq, echo.op_id, echo.sender) == (None, None, op_id, ME)
    assert echo.body == "hi there" and echo.created_at == clock.now
    item = store.outbox_item(op_id)
    assert item is not None and item.state is OutboxState.PENDING and item.attempts == 0


def test_body_at_the_limit_is_accepted(store: Store) -> None:
    send(store, "x" * MAX_BODY_CHARS)
    assert len(store.messages(CID)[0].body) == MAX_BODY_CHARS


INVALID = [
    ("send", {"body": ""}),
    ("send", {"body": "   \n"}),
    ("send", {"body": "x" * (MAX_BODY_CHARS + 1)}),
    ("send", {"body": "lone \ud800 surrogate"}),
    ("send", {}),
    ("send", {"body": 5}),
    ("send", {"body": "ok", "extra": {1, 2}}),  # not JSON-serialisable
    ("send", {"body": "ok", "big": 2**70}),  # does not fit the wire's 64-bit integers
    ("edit", {"body": "x"}),  # no target
    ("edit", {"body": "", "message_id": "m"}),
    ("delete", {}),
    ("mark_read", {"seq": -1}),
    ("mark_read", {"seq": "3"}),
    ("mark_read", {"seq": True}),
    ("mark_read", {"seq": 1.0}),
    ("mark_read", {"seq": 2**70}),
    ("mark_read", {}),
    ("create_conversation", {}),
    ("create_conversation", {"title": ""}),
    ("create_conversation", {"title": "t" * 201}),
    ("create_conversation", {"title": "bad \udc00"}),
    ("create_conversation", {"title": "t", "members": "bob"}),
    ("create_conversation", {"title": "t", "members": ["bob\ud800"]}),
    ("no_such_kind", {"body": "x"}),
]


@pytest.mark.parametrize(
    ("kind", "payload"), INVALID, ids=[f"{k}-{i}" for i, (k, _) in enumerate(INVALID)]
)
def test_invalid_payload_raises_usage_error_and_leaves_nothing(
    store: Store, db_path: Path, kind: str, payload: dict[str, Any]
) -> None:
    cid = "new-conv" if kind == "create_conversation" else CID
    before = counts(db_path)
    with pytest.raises(UsageError):
        store.enqueue(kind, cid, payload)
    assert counts(db_path) == before


@pytest.mark.parametrize(
    ("cid", "op_id"),
    [("", None), ("conv\ud800", None), (CID, 123), (CID, "op\udfff")],
)
def test_invalid_ids_raise_usage_error(store: Store, db_path: Path, cid: str, op_id: Any) -> None:
    before = counts(db_path)
    with pytest.raises(UsageError):
        store.enqueue("send", cid, {"body": "hi"}, op_id=op_id)
    assert counts(db_path) == before


def test_payload_must_be_a_mapping(store: Store) -> None:
    with pytest.raises(UsageError):
        store.enqueue("send", CID, ["body", "hi"])  # type: ignore[arg-type]


def test_unknown_conversation_or_message_is_not_found(store: Store, db_path: Path) -> None:
    before = counts(db_path)
    with pytest.raises(NotFound):
        store.enqueue("send", "no-such-conversation", {"body": "hi"})
    with pytest.raises(NotFound):
        store.enqueue("edit", CID, {"body": "x", "message_id": "no-such-message"})
    with pytest.raises(NotFound):
        store.enqueue("delete", CID, {"target_op_id": "no-such-op"})
    with pytest.raises(NotFound):
        store.enqueue("mark_read", "no-such-conversation", {"seq": 1})
    assert counts(db_path) == before


def test_enqueue_needs_an_account(tmp_path: Path) -> None:
    with Store(tmp_path / "anon.db") as s:
        s.apply_events([conv_updated(CID, 1, 1)])
        with pytest.raises(UsageError):
            s.enqueue("send", CID, {"body": "hi"})
        assert s.outbox() == []


def test_create_conversation_is_shown_at_once_and_pending(store: Store) -> None:
    item, _ = store.enqueue("create_conversation", "c-new", {"title": "Plans", "members": ["bob"]})
    assert item.payload["members"] == ["bob", ME]
    conv = store.conversation("c-new")
    assert conv.pending and conv.title == "Plans" and conv.members == ("bob", ME)
    assert store.mark_sent(OpResult(op_id=item.op_id, status="applied", conversation_id="c-new"))
    assert not store.conversation("c-new").pending


def test_edit_and_delete_of_an_echo_change_it_in_place(store: Store) -> None:
    op_id = send(store, "typo")
    edit, _ = store.enqueue("edit", CID, {"body": "fixed", "target_op_id": op_id})
    assert edit.payload == {"body": "fixed", "target_op_id": op_id}
    assert [m.body for m in store.messages(CID)] == ["fixed"]
    store.enqueue("delete", CID, {"target_op_id": op_id})
    assert [m.body for m in store.messages(CID)] == [""]


def test_edit_and_delete_of_a_server_message_show_at_once(store: Store) -> None:
    store.apply_events([received(CID, 2, 3, mid="m2")])
    edit, _ = store.enqueue("edit", CID, {"body": "new", "message_id": "m2"})
    assert edit.payload == {"body": "new", "message_id": "m2"}
    [m] = store.messages(CID)
    assert m.body == "new" and m.edited_at is not None
    store.enqueue("delete", CID, {"message_id": "m2"})
    [m] = store.messages(CID)
    assert m.deleted and m.body == ""


# --- the push side: claim, mark_sent, mark_failed, retries, recovery ------------------------


def test_claim_is_fifo_and_marks_sending(store: Store) -> None:
    ops = [send(store, f"a{i}") for i in range(3)]
    b = send(store, "b0", cid=CID_B)
    claimed = store.claim()
    assert [i.op_id for i in claimed] == [*ops, b]
    assert all(i.state is OutboxState.SENDING and i.attempts == 1 for i in claimed)
    assert {i.state for i in store.outbox()} == {OutboxState.SENDING}
    assert store.claim() == []  # all in flight


def test_claim_limit(store: Store) -> None:
    ops = [send(store, f"a{i}") for i in range(5)]
    assert store.claim(0) == []
    assert [i.op_id for i in store.claim(2)] == ops[:2]
    assert store.health().sending == 2


def test_in_flight_item_holds_back_its_conversation_only(store: Store) -> None:
    a1 = send(store, "a1")
    assert [i.op_id for i in store.claim()] == [a1]
    a2 = send(store, "a2")
    b1 = send(store, "b1", cid=CID_B)
    # a2 must not overtake a1 (which may yet fail transiently and be retried)
    assert [i.op_id for i in store.claim()] == [b1]
    store.mark_sent(ack(a1, 2))
    assert [i.op_id for i in store.claim()] == [a2]


def test_backing_off_item_blocks_later_items_of_its_conversation_not_others(
    store: Store, clock: Clock
) -> None:
    a1 = send(store, "a1")
    a2 = send(store, "a2")
    b1 = send(store, "b1", cid=CID_B)
    assert [i.op_id for i in store.claim(1)] == [a1]
    store.mark_retry([a1], "unavailable: 503", clock.now + 10)
    item = store.outbox_item(a1)
    assert item is not None and item.state is OutboxState.PENDING
    assert item.next_attempt_at == clock.now + 10 and item.last_error == "unavailable: 503"
    assert store.next_attempt_at() == clock.now + 10
    assert [i.op_id for i in store.claim()] == [b1]
    assert store.claim(now=clock.now + 9.9) == []
    again = store.claim(now=clock.now + 10)
    assert [i.op_id for i in again] == [a1, a2]
    assert again[0].attempts == 2


def test_failed_item_blocks_nothing(store: Store) -> None:
    a1 = send(store, "a1")
    a2 = send(store, "a2")
    assert [i.op_id for i in store.claim(1)] == [a1]
    assert store.mark_failed(a1, "too_large", "body over the limit")
    assert [i.op_id for i in store.claim()] == [a2]
    failed = store.outbox_item(a1)
    assert failed is not None and failed.state is OutboxState.FAILED
    assert failed.last_error == "too_large: body over the limit"
    echo = next(m for m in store.messages(CID) if m.op_id == a1)
    assert echo.state is MessageState.FAILED
    assert not store.mark_failed(a1, "x", "again")  # already failed
    assert store.health().failed == 1


def test_mark_sent_turns_the_echo_into_the_server_copy(store: Store) -> None:
    op_id = send(store, "hello")
    store.claim()
    assert store.mark_sent(ack(op_id, 7, mid="srv-1", ts_ms=1_764_000_000_123))
    [m] = store.messages(CID)
    assert (m.id, m.seq, m.state, m.op_id, m.body) == (
        "srv-1",
        7,
        MessageState.SENT,
        op_id,
        "hello",
    )
    assert m.created_at == 1_764_000_000.123
    item = store.outbox_item(op_id)
    assert item is not None and item.state is OutboxState.SENT
    assert store.conversation(CID).last_seq == 7
    assert not store.mark_sent(ack(op_id, 7, mid="srv-1"))  # a replayed ack changes nothing
    assert store.message_count(CID) == 1
    assert not store.mark_sent(ack("unknown-op", 9))


def _deliver(store: Store, how: str, op_id: str) -> None:
    ev = received(CID, 5, 50, mid="srv-x", sender=ME, op_id=op_id, body="mine")
    if how == "ack":
        store.mark_sent(ack(op_id, 5, mid="srv-x", ts_ms=ev.ts_ms))
    elif how == "live":
        store.apply_events([ev])
    elif how == "pull":
        store.apply_events([ev, ev], cursor=50)
    elif how == "history":
        store.apply_history(
            [
                HistoryMessage(
                    message_id="srv-x",
                    conversation_id=CID,
                    seq=5,
                    op_id=op_id,
                    sender=ME,
                    body="mine",
                    ts_ms=ev.ts_ms,
                )
            ]
        )


@pytest.mark.parametrize(
    "order",
    [
        ("ack", "live"),
        ("live", "ack"),
        ("pull", "ack"),
        ("ack", "pull", "live", "ack"),
        ("live", "live", "ack", "ack"),
        ("history", "ack"),
        ("ack", "history"),
        ("live", "history", "pull"),
    ],
)
def test_ack_and_echo_in_any_order_leave_exactly_one_row(
    store: Store, db_path: Path, order: tuple[str, ...]
) -> None:
    op_id = send(store, "mine")
    store.claim()
    for how in order:
        _deliver(store, how, op_id)
        msgs = store.messages(CID)
        assert len(msgs) == 1, (how, msgs)  # never zero (echo dropped), never two
    [m] = store.messages(CID)
    assert (m.id, m.seq, m.state, m.op_id, m.body) == ("srv-x", 5, MessageState.SENT, op_id, "mine")
    assert m.created_at == 5.0
    with raw(db_path) as c:
        assert c.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    item = store.outbox_item(op_id)
    assert item is not None and item.state is OutboxState.SENT
    assert store.health().pending == store.health().sending == 0


def test_echo_confirmed_by_an_event_is_reported(store: Store) -> None:
    op_id = send(store, "mine")
    result = store.apply_events([received(CID, 2, 3, sender=ME, op_id=op_id, body="mine")])
    assert result.confirmed_ops == [op_id]
    assert result.applied == 1


@pytest.mark.parametrize(
    "order",
    [
        ("live", "ack"),
        ("ack", "live"),
        ("pull", "ack"),
        ("live", "live", "ack", "ack"),
        ("ack", "pull", "live"),
    ],
)
@pytest.mark.parametrize("claimed", [True, False])
def test_a_send_is_reported_sent_exactly_once_whichever_comes_first(
    store: Store, order: tuple[str, ...], claimed: bool
) -> None:
    # The engine emits MessageSent from whichever moved the item to SENT: the ack
    # (mark_sent returns True) or an echo (apply_events lists it in sent_ops). Exactly one.
    op_id = send(store, "mine")
    if claimed:
        store.claim()
    ev = received(CID, 5, 50, mid="srv-x", sender=ME, op_id=op_id, body="mine")
    reports = 0
    for how in order:
        if how == "ack":
            reports += store.mark_sent(ack(op_id, 5, mid="srv-x", ts_ms=ev.ts_ms))
        elif how == "live":
            reports += store.apply_events([ev]).sent_ops.count(op_id)
        else:  # a pulled page may repeat an event
            reports += store.apply_events([ev, ev], cursor=50).sent_ops.count(op_id)
    assert reports == 1
    item = store.outbox_item(op_id)
    assert item is not None and item.state is OutboxState.SENT


def test_own_message_sent_from_another_device_reports_no_send(store: Store) -> None:
    # Same user, an op id this store never queued: nothing of ours was sent.
    result = store.apply_events([received(CID, 2, 3, sender=ME, op_id="other-device-op")])
    assert result.confirmed_ops == ["other-device-op"]
    assert result.sent_ops == []


def test_item_left_sending_by_a_crash_is_recovered(db_path: Path, clock: Clock) -> None:
    with open_store(db_path, clock=clock) as s:
        s.apply_events([conv_updated(CID, 1, 1)])
        op_id = send(s, "in flight")
        assert [i.op_id for i in s.claim()] == [op_id]
        # the process dies here: no mark_sent, no mark_retry
    with open_store(db_path, clock=clock) as s:
        item = s.outbox_item(op_id)
        assert item is not None and item.state is OutboxState.SENDING
        assert s.claim() == []  # within the lease: the claimant might still be alive
        assert s.recover_sending() == 1
        assert s.outbox_item(op_id).state is OutboxState.PENDING  # type: ignore[union-attr]
        [again] = s.claim()
        assert again.op_id == op_id and again.attempts == 2
        assert [m.op_id for m in s.messages(CID)] == [op_id]  # still one echo


def test_sending_item_is_claimable_again_after_the_lease(db_path: Path, clock: Clock) -> None:
    with open_store(db_path, clock=clock) as s:
        s.apply_events([conv_updated(CID, 1, 1)])
        op_id = send(s)
        s.claim()
    with open_store(db_path, clock=clock) as s:
        assert s.claim(now=clock.now + SENDING_LEASE_S / 2) == []
        [again] = s.claim(now=clock.now + SENDING_LEASE_S)
        assert again.op_id == op_id and again.attempts == 2


def test_requeue_failed_to_pending(store: Store) -> None:
    a1 = send(store, "a1")
    store.claim()
    store.mark_failed(a1, "forbidden", "no")
    assert store.requeue([a1]) == [a1]
    item = store.outbox_item(a1)
    assert item is not None and item.state is OutboxState.PENDING and item.attempts == 0
    assert store.messages(CID)[0].state is MessageState.PENDING
    assert [i.op_id for i in store.claim()] == [a1]


def test_requeue_all_failed(store: Store) -> None:
    ops = [send(store, f"m{i}", cid=cid) for i, cid in enumerate((CID, CID_B))]
    store.claim()
    for op in ops:
        store.mark_failed(op, "invalid", "x")
    assert sorted(store.requeue()) == sorted(ops)
    assert store.health().failed == 0 and store.health().pending == 2


def test_requeue_errors_change_nothing(store: Store) -> None:
    failed = send(store, "f")
    pending = send(store, "p", cid=CID_B)
    store.claim(1)
    store.mark_failed(failed, "invalid", "x")
    with pytest.raises(UsageError) as info:
        store.requeue([failed, pending])
    assert not isinstance(info.value, NotFound)
    with pytest.raises(NotFound):
        store.requeue([failed, "no-such-op"])
    # the valid id in the rejected calls was not requeued either
    assert store.outbox_item(failed).state is OutboxState.FAILED  # type: ignore[union-attr]


def test_mark_retry_ignores_items_not_sending(store: Store, clock: Clock) -> None:
    op = send(store)
    store.mark_retry([op], "x", clock.now + 100)  # never claimed
    item = store.outbox_item(op)
    assert item is not None and item.next_attempt_at is None and item.last_error is None


def test_prune_sent_keeps_recent_and_unsent(store: Store, clock: Clock) -> None:
    sent, pending = send(store, "s"), send(store, "p", cid=CID_B)
    store.claim(1)
    store.mark_sent(ack(sent, 2))
    assert store.prune_sent(older_than_s=60) == 0
    clock.advance(61)
    assert store.prune_sent(older_than_s=60) == 1
    assert [i.op_id for i in store.outbox()] == [pending]
    assert store.message_count() == 2  # the message itself stays


# --- G3: atomic catch-up ------------------------------------------------------------------


def _big_page(start_seq: int, n: int) -> list[MessageReceived]:
    return [received(CID, start_seq + i, 100 + i, body="x" * 3000) for i in range(n)]


def test_full_disk_commits_neither_events_nor_cursor(store: Store, db_path: Path) -> None:
    before = counts(db_path)
    store.set_max_page_count(store.page_count())
    with pytest.raises(StoreFull):
        store.apply_events(_big_page(2, 50), cursor=500)
    assert store.cursor() == 2
    assert counts(db_path) == before
    store.set_max_page_count(1 << 30)
    result = store.apply_events(_big_page(2, 50), cursor=500)
    assert result.cursor == store.cursor() == 500
    assert store.message_count(CID) == 50


def test_failure_inside_the_transaction_rolls_back_events_and_cursor(
    store: Store, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = counts(db_path)

    def fail(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    # fails after every event of the page was written, inside the same transaction
    monkeypatch.setattr(store_apply, "set_cursor", fail)
    with pytest.raises(StoreError):
        store.apply_events([received(CID, 2, 3), deleted(CID, 3, 4, "x")], cursor=4)
    monkeypatch.undo()
    assert counts(db_path) == before
    assert store.cursor() == 2
    store.apply_events([received(CID, 2, 3), deleted(CID, 3, 4, "x")], cursor=4)
    assert store.cursor() == 4 and store.message_count(CID) == 1


def test_full_disk_on_enqueue_leaves_nothing(store: Store, db_path: Path) -> None:
    before = counts(db_path)
    store.set_max_page_count(store.page_count())
    with pytest.raises(StoreFull):
        for i in range(200):  # until a new page is needed
            store.enqueue("send", CID, {"body": "y" * 4000}, op_id=f"full-{i}")
    after = counts(db_path)
    # every enqueue that returned is there with its echo; the failing one left nothing
    assert after[0] - before[0] == after[1] - before[1] == len(store.outbox())


def test_cursor_never_moves_backwards(store: Store) -> None:
    assert store.apply_events([], cursor=10).cursor == 10
    result = store.apply_events([received(CID, 2, 5)], cursor=5)
    assert result.cursor == store.cursor() == 10
    assert store.message_count(CID) == 1  # the events still apply
    store.reset_cursor(3)
    assert store.cursor() == 3
    assert store.apply_events([], cursor=4).cursor == 4


def test_last_sync_at_only_when_synced(store: Store, clock: Clock) -> None:
    store.apply_events([], cursor=3)
    assert store.health().last_sync_at is None
    clock.advance(5)
    store.apply_events([], cursor=4, synced=True)
    assert store.health().last_sync_at == clock.now


def test_unknown_events_are_counted_not_applied(store: Store) -> None:
    unknown = UnknownEvent(raw_type="reaction_added", pos=9, data={"type": "reaction_added"})
    result = store.apply_events([unknown, unknown, received(CID, 2, 3)], cursor=9)
    assert (result.unknown, result.applied) == (2, 1)
    store.apply_events([unknown])
    assert store.get_meta("unknown_events") == "3"
    assert store.cursor() == 9


# --- G4 by example (the property test covers the combinations) ------------------------------


def test_edit_before_its_message(store: Store) -> None:
    store.apply_events([updated(CID, 3, 4, "m2", "edited")])
    assert store.messages(CID) == []
    store.apply_events([received(CID, 2, 3, mid="m2", body="original")])
    [m] = store.messages(CID)
    assert m.body == "edited" and m.edited_at == 3.0 and not m.deleted


def test_delete_before_its_message(store: Store) -> None:
    store.apply_events([deleted(CID, 3, 4, "m2")])
    store.apply_events([received(CID, 2, 3, mid="m2", body="secret")])
    [m] = store.messages(CID)
    assert m.deleted and m.body == ""
    assert store.conversation(CID).unread == 0


def test_older_edit_after_a_newer_one_is_ignored(store: Store) -> None:
    store.apply_events([received(CID, 2, 3, mid="m2"), updated(CID, 5, 6, "m2", "newest")])
    store.apply_events([updated(CID, 4, 5, "m2", "older")])
    [m] = store.messages(CID)
    assert m.body == "newest" and m.edited_at == 5.0


def test_edit_after_delete_keeps_it_deleted(store: Store) -> None:
    store.apply_events([received(CID, 2, 3, mid="m2"), deleted(CID, 4, 5, "m2")])
    store.apply_events([updated(CID, 3, 4, "m2", "edited")])
    [m] = store.messages(CID)
    assert m.deleted and m.body == ""


def test_older_conversation_update_after_a_newer_one_is_ignored(store: Store) -> None:
    store.apply_events([conv_updated(CID, 5, 9, members=(ME, "bob", "carol"), title="new")])
    store.apply_events([conv_updated(CID, 3, 7, members=(ME,), title="old")])
    conv = store.conversation(CID)
    assert conv.title == "new" and conv.members == ("bob", "carol", ME)
    assert conv.last_seq == 5


def test_removal_hides_the_conversation_and_re_adding_shows_it(store: Store) -> None:
    store.apply_events([conv_updated(CID, 2, 3, members=("bob",))])
    assert CID not in {c.id for c in store.conversations()}
    with pytest.raises(NotFound):
        store.conversation(CID)
    store.apply_events([conv_updated(CID, 3, 4, members=("bob", ME))])
    assert store.conversation(CID).members == ("bob", ME)


def test_read_receipts_only_move_forward(store: Store) -> None:
    msgs = [received(CID, s, s + 1) for s in range(2, 6)]
    store.apply_events([*msgs, receipt(CID, 7, 8, ME, 4)])
    store.apply_events([receipt(CID, 6, 7, ME, 2)])
    conv = store.conversation(CID)
    assert conv.read_seq == 4 and conv.unread == 1  # seq 5 only


def test_duplicate_events_change_nothing(store: Store) -> None:
    page = [received(CID, 2, 3, mid="m2"), updated(CID, 3, 4, "m2", "e"), receipt(CID, 4, 5, ME, 2)]
    store.apply_events(page, cursor=5)
    first = (store.messages(CID), store.conversations())
    store.apply_events(page + page[::-1], cursor=5)
    assert (store.messages(CID), store.conversations()) == first


# --- reads --------------------------------------------------------------------------------


def test_messages_page_by_seq(store: Store) -> None:
    store.apply_events([received(CID, s, s + 10) for s in range(2, 12)])  # seq 2..11
    assert [m.seq for m in store.messages(CID, limit=3)] == [9, 10, 11]
    assert [m.seq for m in store.messages(CID, before=9, limit=3)] == [6, 7, 8]
    assert [m.seq for m in store.messages(CID, before=4, limit=3)] == [2, 3]
    assert store.messages(CID, before=2) == []
    assert store.lowest_seq(CID) == 2
    assert store.messages(CID_B) == []
    with pytest.raises(UsageError):
        store.messages(CID, limit=0)


def test_echoes_sit_after_the_last_server_message_in_send_order(store: Store, clock: Clock) -> None:
    store.apply_events([received(CID, 2, 3, ts_ms=int(clock.now * 1000) + 3_600_000)])
    clock.now += 100
    first = send(store, "first")
    clock.now -= 10_000  # the local clock jumps back: must not reorder
    second = send(store, "second")
    clock.now += 20_000
    third = send(store, "third")
    # a server message that arrives later, stamped earlier than the echoes
    store.apply_events([received(CID, 3, 4, ts_ms=1_000)])
    msgs = store.messages(CID)
    assert [m.op_id for m in msgs[2:]] == [first, second, third]
    assert [m.seq for m in msgs] == [2, 3, None, None, None]
    # failing one keeps its place among the echoes; sending the first moves it into seq order
    store.claim()
    store.mark_failed(second, "invalid", "x")
    store.mark_sent(ack(first, 4, mid="s4"))
    msgs = store.messages(CID)
    assert [(m.seq, m.op_id) for m in msgs][-3:] == [(4, first), (None, second), (None, third)]
    assert [m.state for m in msgs[-2:]] == [MessageState.FAILED, MessageState.PENDING]
    # a page with ``before`` holds server messages only
    assert [m.seq for m in store.messages(CID, before=5)] == [2, 3, 4]


def test_unread_counts(store: Store) -> None:
    store.apply_events(
        [
            received(CID, 2, 3, sender="bob"),
            received(CID, 3, 4, sender=ME, op_id="other-device"),
            received(CID, 4, 5, sender="carol", mid="gone"),
            received(CID, 5, 6, sender="bob"),
            deleted(CID, 6, 7, "gone"),
            received(CID_B, 2, 8, sender="bob"),
            receipt(CID, 7, 9, "bob", 6),  # someone else's receipt changes nothing for me
        ]
    )
    unread = {c.id: c.unread for c in store.conversations()}
    assert unread == {CID: 2, CID_B: 1}
    send(store, "my pending echo")  # own messages never count
    assert store.conversation(CID).unread == 2
    store.enqueue("mark_read", CID, {"seq": 2})
    assert store.conversation(CID).unread == 1
    assert store.conversation(CID).read_seq == 2
    store.enqueue("mark_read", CID, {"seq": 1})  # never backwards
    assert store.conversation(CID).read_seq == 2
    store.apply_events([receipt(CID, 8, 10, ME, 7)])  # read on another device
    assert store.conversation(CID).unread == 0


def test_conversations_newest_activity_first(store: Store) -> None:
    store.apply_events([received(CID_B, 5, 20)])
    assert [c.id for c in store.conversations()] == [CID_B, CID]
    store.apply_events([received(CID, 9, 21)])
    assert [c.id for c in store.conversations()] == [CID, CID_B]


def test_typing_expires_and_follows_server_time(store: Store, clock: Clock) -> None:
    assert store.apply_typing(CID, "bob", typing=True, ts_ms=2_000)
    assert store.apply_typing(CID, "carol", typing=True, ts_ms=2_100, ttl_s=2)
    assert store.apply_typing(CID, ME, typing=True, ts_ms=2_000)  # own: never shown
    assert [t.user for t in store.typing(CID)] == ["bob", "carol"]
    assert store.typing(CID)[0].expires_at == clock.now + 8
    # a stop stamped before the start (reordered delivery) does not override it
    assert not store.apply_typing(CID, "bob", typing=False, ts_ms=1_500)
    assert [t.user for t in store.typing(CID)] == ["bob", "carol"]
    clock.advance(3)  # carol's 2 s ttl ran out: hidden even without a stop
    assert [t.user for t in store.typing(CID)] == ["bob"]
    assert store.apply_typing(CID, "bob", typing=False, ts_ms=2_500)
    assert store.typing(CID) == []
    assert not store.apply_typing(CID, "bob", typing=True, ts_ms=2_400)  # older start
    assert store.typing(CID) == []
    assert store.typing(CID_B) == []
    assert store.prune_typing() == 2  # bob's stop and carol's expiry; mine still runs
    store.apply_typing(CID, "bob", typing=True, ts_ms=9_000)
    store.clear_typing()
    assert store.typing(CID) == []


def test_presence_follows_server_time(store: Store) -> None:
    assert store.presence("bob") is None
    assert store.apply_presence("bob", "online", ts_ms=2_000)
    assert not store.apply_presence("bob", "offline", ts_ms=1_000, last_seen_ms=900)
    p = store.presence("bob")
    assert p is not None and p.status is PresenceStatus.ONLINE and p.last_seen is None
    assert store.apply_presence("bob", "offline", ts_ms=3_000, last_seen_ms=2_900)
    assert store.apply_presence("bob", "away", ts_ms=4_000)
    p = store.presence("bob")
    assert p is not None and p.status is PresenceStatus.AWAY and p.last_seen == 2.9
    store.apply_presence("alice", "online", ts_ms=1)
    assert [p.user for p in store.all_presence()] == ["alice", "bob"]
    with pytest.raises(UsageError):
        store.apply_presence("bob", "invisible", ts_ms=5_000)


def test_health_is_derived_from_the_store(store: Store, clock: Clock) -> None:
    h = store.health()
    assert (h.pending, h.sending, h.failed, h.oldest_pending_age_s) == (0, 0, 0, None)
    assert h.cursor == 2 and h.state is ConnectionState.OFFLINE and h.in_sync
    oldest = send(store, "1")
    clock.advance(10)
    second = send(store, "2", cid=CID_B)
    clock.advance(5)
    send(store, "3", cid=CID_B)
    store.claim(1)  # oldest -> sending
    store.claim(1)  # second -> sending
    store.mark_failed(second, "invalid", "x")
    store.set_state(ConnectionState.LIVE)
    store.apply_events([received(CID, 2, 40)], cursor=40, synced=True)
    h = store.health()
    assert (h.pending, h.sending, h.failed) == (1, 1, 1)
    assert h.oldest_pending_age_s == 15
    assert h.cursor == 40 and h.last_sync_at == clock.now
    assert h.state is ConnectionState.LIVE and not h.in_sync
    assert (h.conversations, h.messages) == (2, 4)
    store.mark_sent(ack(oldest, 3))
    assert store.health().oldest_pending_age_s == 0  # the third, queued just now


def test_open_gaps_come_from_the_caller_only(store: Store) -> None:
    # The sync protocol of the syncing process knows the gaps; the file does not keep them
    # (nothing ever wrote meta.open_gaps: reading it was dead code).
    assert store.health(open_gaps=3).open_gaps == 3
    assert not store.health(open_gaps=3).in_sync
    store.set_meta(open_gaps="5")
    assert store.health().open_gaps == 0
    assert store.health(open_gaps=0).in_sync


def test_account_is_remembered_and_cannot_be_mixed(db_path: Path, clock: Clock) -> None:
    with Store(db_path, clock=clock) as s:
        assert s.account() == {"server": None, "user": None, "device": None}
        s.set_account(server="https://a", user="alice", device="laptop")
    with Store(db_path, clock=clock) as s:
        assert s.user == "alice"
        with pytest.raises(UsageError):
            s.set_account(server="https://a", user="bob", device="laptop")
        with pytest.raises(UsageError):
            s.set_account(server="https://b", user="alice", device="laptop")
        s.set_account(server="https://a", user="alice", device="phone")
        assert s.account()["device"] == "phone"


# --- files --------------------------------------------------------------------------------


def test_files_are_private_even_under_umask_022(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "fresh" / "dir" / "sync.db"
        with open_store(path) as s:
            s.apply_events([conv_updated(CID, 1, 1)])
            send(s)
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert p.exists() and file_mode(p) == 0o600, p
            assert file_mode(path.parent) == 0o700
    finally:
        os.umask(old)


def test_existing_loose_modes_are_tightened_on_open(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    first = open_store(path)  # keeps -wal and -shm in place while open
    try:
        first.apply_events([conv_updated(CID, 1, 1)])
        files = (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        for p in files:
            os.chmod(p, 0o644)
        with open_store(path):
            assert [file_mode(p) for p in files] == [0o600] * 3
    finally:
        first.close()


def test_every_folder_the_store_creates_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    before = file_mode(tmp_path)
    try:
        path = tmp_path / "a" / "b" / "c" / "sync.db"
        with open_store(path):
            pass
        for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
            assert file_mode(folder) == 0o700, folder
        assert file_mode(tmp_path) == before  # it existed: untouched
    finally:
        os.umask(old)


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    os.chmod(folder, 0o755)
    with open_store(folder / "sync.db"):
        pass
    assert file_mode(folder) == 0o755


@pytest.mark.parametrize(
    ("narrowed", "expected"), [(0o444, 0o400), (0o400, 0o400)], ids=["0444", "0400"]
)
def test_opening_never_widens_a_mode_the_owner_narrowed(
    tmp_path: Path, narrowed: int, expected: int
) -> None:
    path = tmp_path / "sync.db"
    with open_store(path) as s:
        s.apply_events([conv_updated(CID, 1, 1)])
    os.chmod(path, narrowed)
    try:
        # As root the file still opens; as another user SQLite refuses to write it. Either
        # way group and other lose their bits and the owner gains none.
        with contextlib.suppress(StoreError), open_store(path):
            pass
        assert file_mode(path) == expected
    finally:
        os.chmod(path, 0o600)


# --- schema, migrations, corruption ----------------------------------------------------------


def test_migrations_are_recorded(store: Store, db_path: Path) -> None:
    names = [
        "0001_initial",
        "0002_opaque_cursor_event_ids",
        "0003_replies",
        "0004_reactions",
        "0005_echo_beside_server_copy",
    ]
    assert store.schema == list(SCHEMA_NAMES) == names
    with raw(db_path) as c:
        rows = c.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    assert rows == [("syncengine.store", name) for name in SCHEMA_NAMES]


def test_reopening_applies_nothing_twice(db_path: Path) -> None:
    for _ in range(3):
        open_store(db_path).close()
    with raw(db_path) as c:
        assert c.execute("SELECT COUNT(*) FROM _sqlite_migrations").fetchone()[0] == len(
            SCHEMA_NAMES
        )


def test_schema_too_new_is_refused_and_left_untouched(db_path: Path) -> None:
    with open_store(db_path) as s:
        s.apply_events([conv_updated(CID, 1, 1)])
    with raw(db_path) as c:
        c.execute(
            "INSERT INTO _sqlite_migrations(migration_set, name, applied_at) "
            "VALUES ('syncengine.store', '0099_from_the_future', 'later')"
        )
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data, mtime = db_path.read_bytes(), os.stat(db_path).st_mtime_ns
    time.sleep(0.01)
    with pytest.raises(SchemaTooNew, match="0099_from_the_future"):
        Store(db_path)
    assert db_path.read_bytes() == data
    assert os.stat(db_path).st_mtime_ns == mtime
    wal = Path(f"{db_path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_garbage_file_is_corrupt_and_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "sync.db"
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    with pytest.raises(StoreCorrupt) as info:
        Store(path)
    assert info.value.path == str(path) and info.value.moved_to is None
    assert path.read_bytes() == garbage  # never deleted, never rewritten
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)  # raise ... from
    Path(f"{path}-wal").write_bytes(b"old wal")
    Path(f"{path}-shm").write_bytes(b"old shm")
    target = move_aside(path)
    assert not path.exists() and target.read_bytes() == garbage
    assert target.name.startswith("sync.db.corrupt-")
    assert Path(f"{target}-wal").read_bytes() == b"old wal"
    assert Path(f"{target}-shm").read_bytes() == b"old shm"
    with open_store(path) as s:  # a fresh store opens in its place
        assert s.integrity_check() == "ok" and s.cursor() == 0
    path.write_bytes(garbage)  # a second damaged file: moved beside the first, not over it
    second = move_aside(path)
    assert second != target and second.exists() and target.exists()


def test_damaged_database_is_corrupt(db_path: Path, tmp_path: Path) -> None:
    with open_store(db_path) as s:
        s.apply_events([conv_updated(CID, 1, 1)])
        s.checkpoint()
    with open(db_path, "r+b") as f:  # overwrite the schema page after the header
        f.seek(100)
        f.write(b"\xa5" * 3000)
    damaged = db_path.read_bytes()
    with pytest.raises(StoreCorrupt):
        Store(db_path)
    assert db_path.read_bytes() == damaged


def test_every_migration_has_a_golden_database() -> None:
    # Policy: every new migration adds tests/data/schemas/vNNNN.db made by make_vNNNN.py.
    for n, _name in enumerate(SCHEMA_NAMES, start=1):
        assert (SCHEMAS / f"v{n:04d}.db").is_file(), f"add a golden file for {_name}"
        assert (SCHEMAS / f"make_v{n:04d}.py").is_file()


@pytest.mark.parametrize("golden", sorted(p.name for p in SCHEMAS.glob("v*.db")))
def test_every_older_schema_opens_with_the_current_code(tmp_path: Path, golden: str) -> None:
    path = tmp_path / golden
    shutil.copyfile(SCHEMAS / golden, path)  # never open the golden file itself
    with Store(path) as s:
        assert s.schema == list(SCHEMA_NAMES)
        assert s.integrity_check() == "ok"
        assert s.user == "alice"
        assert s.message_count() > 0 and s.outbox() and s.cursor() > 0


def test_golden_v0001_data_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "v0001.db"
    shutil.copyfile(SCHEMAS / "v0001.db", path)
    clock = Clock(1_764_200_000.0)
    with Store(path, clock=clock) as s:
        assert s.account() == {
            "server": "http://127.0.0.1:8765",
            "user": "alice",
            "device": "laptop",
        }
        convs = {c.id: c for c in s.conversations()}
        golden = convs["c-golden"]
        assert (golden.title, golden.members, golden.last_seq) == ("Golden", ("alice", "bob"), 8)
        assert (golden.read_seq, golden.unread) == (2, 0)
        assert convs["c-pending"].pending and convs["c-pending"].members == ("alice", "carol")
        msgs = s.messages("c-golden")
        assert [(m.seq, m.sender, m.body, m.state.value, m.deleted) for m in msgs] == [
            (2, "bob", "hello, edited", "sent", False),
            (3, "alice", "hi bob", "sent", False),
            (5, "bob", "", "sent", True),
            (None, "alice", "still pending", "pending", False),
            (None, "alice", "refused", "failed", False),
        ]
        assert msgs[0].edited_at == 1_764_100_004.0
        states = [(i.op_id, i.state.value) for i in s.outbox()]
        assert states == [
            ("op-golden-1", "sent"),
            ("op-golden-2", "pending"),
            ("op-golden-3", "failed"),
            ("op-golden-4", "pending"),
        ]
        assert s.outbox_item("op-golden-3").last_error == "too_large: over the limit"  # type: ignore[union-attr]
        assert s.cursor() == 8
        p = s.presence("bob")
        assert p is not None and p.status is PresenceStatus.AWAY and p.last_seen == 1_764_100_000.5
        assert [q["error"] for q in s.quarantined()] == ["poison"]
        assert s.history_complete("c-golden")
        # and the old file keeps working with the current code
        s.apply_events([received("c-golden", 9, 9, sender="bob", body="after upgrade")], cursor=9)
        s.claim()
        assert s.messages("c-golden")[3].body == "after upgrade"
        assert s.outbox()[1].payload == {"body": "still pending"}


# --- locking ------------------------------------------------------------------------------

LOCKER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("INSERT INTO meta(key, value) VALUES ('locker', 'was here')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [PYTHON, "-c", LOCKER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_write_lock_held_past_the_busy_timeout_is_store_locked(db_path: Path) -> None:
    with open_store(db_path, busy_timeout_s=0.5) as s:
        s.apply_events([conv_updated(CID, 1, 1)])
        proc = _hold_write_lock(db_path, 30)
        try:
            started = time.monotonic()
            with pytest.raises(StoreLocked):
                s.enqueue("send", CID, {"body": "blocked"})
            waited = time.monotonic() - started
            assert 0.4 <= waited < 5, waited
            with pytest.raises(StoreLocked):
                s.apply_events([received(CID, 2, 2)], cursor=2)
        finally:
            proc.kill()
            proc.wait()
        assert s.outbox() == [] and s.cursor() == 0
        send(s, "after the lock")  # the lock is gone with the process


def test_short_lock_is_waited_out(db_path: Path) -> None:
    with open_store(db_path, busy_timeout_s=5) as s:
        s.apply_events([conv_updated(CID, 1, 1)])
        proc = _hold_write_lock(db_path, 0.3)
        started = time.monotonic()
        send(s, "waited")
        assert time.monotonic() - started >= 0.1
        assert proc.wait(timeout=10) == 0
        assert s.get_meta("locker") == "was here"
        assert len(s.outbox()) == 1


def test_readers_open_and_read_while_another_process_writes(db_path: Path) -> None:
    with open_store(db_path) as s:
        s.apply_events([conv_updated(CID, 1, 1), received(CID, 2, 2)], cursor=2)
    proc = _hold_write_lock(db_path, 30)
    try:
        started = time.monotonic()
        with open_store(db_path, busy_timeout_s=0.5) as reader:  # like the CLI beside the daemon
            assert [m.seq for m in reader.messages(CID)] == [2]
            assert reader.health().cursor == 2
        assert time.monotonic() - started < 0.4  # it did not wait for the writer at all
    finally:
        proc.kill()
        proc.wait()


# --- resync snapshot --------------------------------------------------------------------------


def test_resync_snapshot_sets_titles_and_members(store: Store) -> None:
    store.enqueue("create_conversation", "c-local", {"title": "offline", "members": []})
    store.replace_conversations(
        [
            {"id": CID, "title": "from snapshot", "members": [ME, "dave"], "last_seq": 4},
            {"id": "c-new", "title": "new", "members": ["bob", ME], "last_seq": 9},
        ]
    )
    convs = {c.id: c for c in store.conversations()}
    assert set(convs) == {CID, "c-new", "c-local"}  # CID_B: no longer a member
    assert (convs[CID].title, convs[CID].members) == ("from snapshot", ("dave", ME))
    assert convs["c-local"].pending  # still being created: left alone
    # an update newer than the snapshot still applies afterwards
    store.apply_events([conv_updated(CID, 5, 20, members=(ME,), title="later")])
    assert store.conversation(CID).title == "later"


def test_resync_snapshot_older_than_a_stored_update_does_not_undo_it(store: Store) -> None:
    # the live channel applied seq 10 while the snapshot (taken at seq 8) was on its way
    store.apply_events([conv_updated(CID, 10, 10, members=(ME, "bob", "carol"), title="newer")])
    snapshot = [{"id": CID, "title": "older", "members": [ME, "bob"], "last_seq": 8}]
    store.replace_conversations([*snapshot, {"id": CID_B, "title": "b", "members": [ME]}])
    conv = store.conversation(CID)
    assert (conv.title, conv.members) == ("newer", ("bob", "carol", ME))
    # replaying the newer event (the pull from the snapshot's head) keeps it so
    store.apply_events([conv_updated(CID, 10, 10, members=(ME, "bob", "carol"), title="newer")])
    assert store.conversation(CID).title == "newer"


# --- the server's copy taking over (issue 12) --------------------------------------------


def _hist(seq: int, body: str, *, edited: bool = False, deleted: bool = False, **kw: Any) -> Any:
    return HistoryMessage(
        message_id=kw.pop("mid", f"{CID}-m{seq}"),
        conversation_id=CID,
        seq=seq,
        sender=kw.pop("sender", "bob"),
        body="" if deleted else body,
        ts_ms=1_000 * seq,
        edited_ms=9_000 if edited else None,
        deleted=deleted,
        **kw,
    )


def _view(store: Store) -> list[tuple[Any, ...]]:
    return [(m.id, m.seq, m.body, m.deleted) for m in store.messages(CID, limit=100)]


def test_a_server_range_replaces_the_stored_one(store: Store) -> None:
    store.apply_events(
        [
            conv_updated(CID, 1, 1),
            received(CID, 2, 2),
            updated(CID, 3, 3, f"{CID}-m2", "edit 1"),
            received(CID, 4, 4),
            received(CID, 5, 5, mid="forgotten"),
        ]
    )
    # The server: m2 edited again (its edit seq unknown to the copy), m4 deleted, seq 5
    # reused by another message (the old one was forgotten by a restored server).
    store.authoritative(
        authority.replace_range,
        CID,
        [_hist(2, "edit 2", edited=True), _hist(4, "", deleted=True), _hist(5, "new", mid="n5")],
        low=2,
        high=None,
        last_seq=5,
    )
    assert _view(store) == [
        (f"{CID}-m2", 2, "edit 2", False),
        (f"{CID}-m4", 4, "", True),
        ("n5", 5, "new", False),
    ]
    assert store.conversation(CID).last_seq == 5


def test_a_server_range_keeps_an_unacknowledged_local_edit(store: Store) -> None:
    store.apply_events([conv_updated(CID, 1, 1), received(CID, 2, 2)])
    store.enqueue(OpKind.EDIT, CID, {"message_id": f"{CID}-m2", "body": "mine, pending"})
    store.authoritative(authority.replace_range, CID, [_hist(2, f"body {CID}/2")], low=2, high=2)
    assert _view(store) == [(f"{CID}-m2", 2, "mine, pending", False)]


def test_an_echo_stays_beside_another_devices_message_with_its_op_id(store: Store) -> None:
    store.apply_events([conv_updated(CID, 1, 1)])
    item, _ = store.enqueue(OpKind.SEND, CID, {"body": "from this device"})
    # Another device of the same user used the op id for another message first.
    other = received(CID, 2, 2, mid="other", sender=ME, op_id=item.op_id, body="from the other")
    store.apply_events([other], cursor=2)
    rows = [(m.id, m.body, m.state) for m in store.messages(CID, limit=10)]
    assert rows == [
        ("other", "from the other", MessageState.SENT),
        (None, "from this device", MessageState.PENDING),
    ]
    assert store.outbox_item(item.op_id).state is OutboxState.PENDING


def test_known_seqs_match_the_conversations_listing_without_counting_unread(
    store: Store,
) -> None:
    store.apply_events(
        [
            conv_updated(CID, 1, 1),
            received(CID, 2, 2),
            received(CID, 3, 3),
            conv_updated(CID_B, 1, 4),
            conv_updated("conv-left", 1, 5),
            conv_updated("conv-left", 2, 6, members=("bob", "carol")),  # I was removed
        ],
        cursor=6,
    )
    send(store, cid=CID_B)  # a local echo moves no seq
    listed = {c.id: c.last_seq for c in store.conversations() if c.last_seq}
    from syncengine.store.store import known_seqs

    assert known_seqs(store) == listed == {CID: 3, CID_B: 1}


@pytest.mark.parametrize(
    "row",
    [
        ("c1", "op", "m1", 5, "bob", "hello", "sent", 1.5, None, 0, None),
        ("c1", None, None, None, ME, "echo", "pending", 2.0, None, 0, None),
        ("c1", "op2", "m2", 6, "bob", "", "sent", 3.0, 4.0, 1, None),
        ("c1", "op3", None, None, ME, "x", "failed", 5.0, None, 0, None),
    ],
)
def test_history_rows_are_the_messages_the_attrs_constructor_builds(row: tuple[Any, ...]) -> None:
    from syncengine.models import Message
    from syncengine.store import queries

    built = queries._message(row)
    expected = Message(
        conversation_id=row[0],
        op_id=row[1],
        id=row[2],
        seq=row[3],
        sender=row[4],
        body=row[5],
        state=MessageState(row[6]),
        created_at=row[7],
        edited_at=row[8],
        deleted=bool(row[9]),
        reply_to=row[10],
    )
    assert built == expected and repr(built) == repr(expected)
    assert built.reactions is not queries._message(row).reactions  # a fresh dict per row
    assert type(built.deleted) is bool
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.body = "changed"  # type: ignore[misc]


def test_pulled_pages_commit_without_fsync_and_sends_with_it(store: Store) -> None:
    # G3 holds with synchronous=NORMAL (page and cursor in one WAL transaction: a power
    # loss takes both back, and the page is pulled again); G1 needs FULL for every send.
    statements: list[str] = []
    store._db.conn.set_trace_callback(statements.append)
    store.apply_events([conv_updated(CID, 1, 1), received(CID, 2, 2)], cursor=2)
    applied, statements[:] = list(statements), []
    send(store, cid=CID)
    sent = list(statements)
    store._db.conn.set_trace_callback(None)
    assert applied[0] == "PRAGMA synchronous = NORMAL" and applied[1] == "BEGIN IMMEDIATE"
    assert applied[-1] == "PRAGMA synchronous = FULL"
    assert not any("synchronous" in s for s in sent)
    assert store._db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_failed_page_leaves_the_connection_at_full(store: Store) -> None:
    with pytest.raises(StoreError), store._db.write(replayable=True) as c:
        c.execute("SELECT * FROM no_such_table")
    assert store._db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
