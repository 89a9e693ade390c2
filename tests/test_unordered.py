"""Opaque, unordered cursors and server events without seq (Matrix), without a socket:
``core/unordered.py`` (who owns the cursor, Checkpoints, op targets) and
``store/unordered.py`` (store-assigned order keys, the token column)."""

from __future__ import annotations

from pathlib import Path

from syncengine.core.cursor import TransportCapabilities
from syncengine.core.requests import CatchUp
from syncengine.core.sync import SyncProtocol
from syncengine.core.unordered import (
    for_app,
    op_targets,
    split_live_batch,
    sync_before_push,
    with_targets,
)
from syncengine.events import (
    Checkpoint,
    ConversationUpdated,
    Discontinuity,
    Gap,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
    TypingStarted,
)
from syncengine.models import ConnectionState as CS
from syncengine.store.unordered import FIRST_SEQ
from tests.helpers_store import open_store

MATRIX = TransportCapabilities(ordered_cursor=False, dense_seq=False, server_seq=False)
ROOM = "!room"


def msg(event_id: str, body: str = "x", sender: str = "@bob:hs", op_id: str | None = None):
    return MessageReceived(
        pos=None,
        conversation_id=ROOM,
        seq=None,
        ts_ms=1,
        message_id=event_id,
        event_id=event_id,
        op_id=op_id,
        sender=sender,
        body=body,
    )


def joined() -> ConversationUpdated:
    """The room's state event (as the Matrix transport builds it): @me:hs is a member."""
    return ConversationUpdated(
        pos=None,
        conversation_id=ROOM,
        seq=None,
        ts_ms=0,
        title="room",
        members=("@me:hs", "@bob:hs"),
        actor="@bob:hs",
        event_id="$create",
    )


def test_a_live_batch_is_cut_after_each_checkpoint() -> None:
    typing = TypingStarted(conversation_id=ROOM, user="@bob:hs", ts_ms=1)
    gap = Gap(conversation_id=ROOM, token="t1", since="s0")
    batch = [msg("$a"), typing, Checkpoint(cursor="s1"), gap, msg("$b"), Checkpoint(cursor="s2")]
    batch.append(msg("$c"))
    segments = split_live_batch(batch)
    assert [s.cursor for s in segments] == ["s1", "s2", None]
    assert [[e.event_id for e in s.durable] for s in segments] == [["$a"], ["$b"], ["$c"]]
    assert segments[0].other == (typing,) and segments[1].gaps == (gap,)
    assert split_live_batch([]) == []


def test_the_link_owns_an_opaque_cursor_and_its_first_checkpoint_means_caught_up() -> None:
    core = SyncProtocol(cursor="s0", capabilities=MATRIX)
    assert core.receive_checkpoint("s1") is None  # no link: pulls own the cursor
    assert not core.link_owns_cursor
    core.receive_ready("s0")
    assert core.link_owns_cursor and not core.caught_up
    decision = core.receive_live(msg("$a"))  # no seq: no gap, and no cursor from an event
    assert decision.cursor is None and not decision.gap
    assert core.receive_checkpoint("s1") == "s1" and core.caught_up
    core.committed("s1")
    assert core.cursor == "s1"
    core.committed("s0")  # unordered: the newest committed token is the cursor
    assert core.cursor == "s0"
    core.connection_lost()
    assert not core.link_owns_cursor and not core.caught_up


def test_v1_links_never_own_the_cursor() -> None:
    core = SyncProtocol(cursor=5)
    core.receive_ready(5)
    assert not core.link_owns_cursor
    assert core.receive_checkpoint(9) is None
    assert not sync_before_push(core.capabilities) and sync_before_push(MATRIX)


def test_no_pull_runs_beside_a_link_that_owns_the_cursor() -> None:
    core = SyncProtocol(cursor="s0", capabilities=MATRIX)
    core.receive_ready("s0")
    core.transition(CS.CONNECTING)
    core.transition(CS.SYNCING)
    core.transition(CS.LIVE)
    core.reached_live(0.0)
    core.schedule.want_pull()
    due = core.tick(1000.0)
    assert not any(isinstance(r, CatchUp) for r in due)
    assert core.next_wakeup(1000.0) > 1000.0  # counted as done: no busy loop
    v1 = SyncProtocol(cursor=0)
    v1.receive_ready(0)
    v1.transition(CS.CONNECTING)
    v1.transition(CS.SYNCING)
    v1.transition(CS.LIVE)
    v1.reached_live(0.0)
    v1.schedule.want_pull()
    assert any(isinstance(r, CatchUp) for r in v1.tick(1000.0))


def test_op_targets_name_event_ids_or_wait() -> None:
    edit = {"kind": "edit", "conversation_id": ROOM, "target_op_id": "op1", "message_id": None}
    assert op_targets(edit) == ("op1", None)
    assert with_targets(edit, "$m")["message_id"] == "$m"
    assert with_targets(edit, None) is edit  # unresolved: unchanged, the transport waits
    assert op_targets({**edit, "message_id": "$m"}) == (None, None)
    read = {"kind": "mark_read", "conversation_id": ROOM, "seq": 7}
    assert op_targets(read) == (None, 7)
    assert with_targets(read, "$r")["event_id"] == "$r"
    assert op_targets({"kind": "send", "body": "x"}) == (None, None)


def test_the_store_numbers_events_in_delivery_order_and_keeps_keys(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.db", user="@me:hs") as s:
        s.apply_events([joined(), msg("$a", "a"), msg("$b", "b")], cursor="s1")
        s.apply_events([msg("$b", "b"), msg("$c", "c")], cursor="s2")  # $b again: same key
        stored = s.messages(ROOM, limit=10)
        assert [(m.body, m.seq) for m in stored] == [
            ("a", FIRST_SEQ + 1),
            ("b", FIRST_SEQ + 2),
            ("c", FIRST_SEQ + 3),
        ]
        assert s.cursor() == "s2"
        assert s.conversation(ROOM).last_seq == FIRST_SEQ + 3
        # an edit gets a later key, so the edit guard still orders edits
        edit = MessageUpdated(
            pos=None,
            conversation_id=ROOM,
            seq=None,
            ts_ms=2,
            message_id="$a",
            event_id="$edit",
            body="a2",
            editor="@bob:hs",
        )
        s.apply_events([edit])
        assert s.messages(ROOM, limit=10)[0].body == "a2"
        assert s.event_id_at(ROOM, FIRST_SEQ + 2) == "$b"
        assert s.event_id_at(ROOM, FIRST_SEQ - 1) is None


def test_receipts_by_event_id_become_read_seqs(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.db", user="@me:hs") as s:
        s.apply_events([joined(), msg("$a"), msg("$b")])

        def receipt(user: str, event_id: str) -> ReadReceipt:
            return ReadReceipt(
                pos=None,
                conversation_id=ROOM,
                seq=None,
                ts_ms=3,
                user=user,
                read_seq=None,
                read_event_id=event_id,
            )

        s.apply_events([receipt("@me:hs", "$b"), receipt("@bob:hs", "$unknown")])
        assert s.conversation(ROOM).read_seq == FIRST_SEQ + 2
        assert s.conversation(ROOM).last_seq == FIRST_SEQ + 2  # a receipt takes no key


def test_history_counts_down_below_the_first_key(tmp_path: Path) -> None:
    from syncengine.wire import HistoryMessage

    with open_store(tmp_path / "s.db", user="@me:hs") as s:
        s.apply_events([msg("$new", "new")])
        older = [
            HistoryMessage(
                message_id=f"$old{i}",
                conversation_id=ROOM,
                seq=None,
                op_id=None,
                sender="@bob:hs",
                body=f"old{i}",
                ts_ms=i,
            )
            for i in range(3)
        ]
        s.apply_history(older)
        assert [(m.body, m.seq) for m in s.messages(ROOM, limit=10)] == [
            ("old0", FIRST_SEQ - 3),
            ("old1", FIRST_SEQ - 2),
            ("old2", FIRST_SEQ - 1),
            ("new", FIRST_SEQ),
        ]


def test_an_all_digit_token_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(path) as s:
        s.apply_events([], cursor="000123")
    with open_store(path) as s:
        assert s.cursor() == "000123"  # not the integer 123


def test_own_echo_gets_its_event_id_and_key_after_an_ack_without_seq(tmp_path: Path) -> None:
    from syncengine.wire import OpResult

    with open_store(tmp_path / "s.db", user="@me:hs") as s:
        s.apply_events([joined()])
        s.enqueue("send", ROOM, {"body": "mine"}, op_id="op1")
        s.claim()
        s.mark_sent(OpResult(op_id="op1", status="applied", conversation_id=ROOM, message_id="$m"))
        assert s.message_event_id("op1") == "$m"  # from the acknowledgement
        s.apply_events([msg("$m", "mine", sender="@me:hs", op_id="op1")])
        [only] = s.messages(ROOM, limit=10)
        assert (only.id, only.seq, only.body) == ("$m", FIRST_SEQ + 1, "mine")


def test_a_gap_reaches_the_app_as_a_per_conversation_discontinuity() -> None:
    told = for_app(Gap(conversation_id=ROOM, token="t9", since="s3"))
    assert told == Discontinuity(old_cursor="s3", new_cursor="t9", conversation_id=ROOM)
    event = msg("$a")
    assert for_app(event) is event
