"""Issue 18's chat operations through the public API: by message id, and cancel.

The decision of what may be cancelled is pure (``core/cancel.py``) and tested without a
socket; the rest runs two engines against the reference server on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncengine import ConnectionState, NotFound, SyncEngine, UsageError
from syncengine.core.cancel import cancel_refusal
from syncengine.core.sync import OUTBOX_TRANSITIONS
from syncengine.models import OpKind, OutboxState
from syncengine.store import Store
from tests.conftest import FAST
from tests.test_engine import bodies, eventually, server_bodies

P, SENDING, SENT, F = (
    OutboxState.PENDING,
    OutboxState.SENDING,
    OutboxState.SENT,
    OutboxState.FAILED,
)


# --- the decision, sans I/O -------------------------------------------------------------


def test_only_what_the_server_cannot_have_applied_is_cancellable() -> None:
    assert cancel_refusal(OpKind.SEND, P, 0, 0) is None  # never left this device
    assert cancel_refusal(OpKind.SEND, F, 3, 0) is None  # refused: nothing applied
    assert cancel_refusal(OpKind.CREATE_CONVERSATION, P, 0, 0) is None
    assert "already sent" in str(cancel_refusal(OpKind.SEND, SENT, 1, 0))
    assert "being sent" in str(cancel_refusal(OpKind.SEND, SENDING, 1, 0))
    # Pushed once without an answer: the server may have applied it (a lost ack).
    assert "may have applied" in str(cancel_refusal(OpKind.SEND, P, 1, 0))
    for kind in (OpKind.EDIT, OpKind.DELETE, OpKind.MARK_READ):
        assert "queue another" in str(cancel_refusal(kind, P, 0, 0))
    assert "cancel them first" in str(cancel_refusal(OpKind.CREATE_CONVERSATION, P, 0, 2))


def test_a_cancel_is_a_deletion_not_an_outbox_state() -> None:
    # No state means "cancelled" and no move leads out of the table for it: the row goes.
    assert {s for pair in OUTBOX_TRANSITIONS for s in pair} == set(OutboxState)
    assert len(OutboxState) == 4


# --- the store ----------------------------------------------------------------------------


def test_cancel_removes_the_row_and_its_echo(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as store:
        store.set_account(server="http://127.0.0.1:1", user="alice", device="d")
        conv, _ = store.enqueue(OpKind.CREATE_CONVERSATION, "c" * 8, {"title": "t"})
        kept, _ = store.enqueue(OpKind.SEND, conv.conversation_id, {"body": "keep"})
        gone, _ = store.enqueue(OpKind.SEND, conv.conversation_id, {"body": "gone"})
        with pytest.raises(UsageError, match="depend on it"):
            store.cancel(conv.op_id)  # two sends are queued into it
        assert store.cancel(gone.op_id).op_id == gone.op_id
        assert store.outbox_item(gone.op_id) is None and store.message_by_op(gone.op_id) is None
        assert [m.body for m in store.messages(conv.conversation_id)] == ["keep"]
        with pytest.raises(NotFound):
            store.cancel(gone.op_id)
        edit, _ = store.enqueue(
            OpKind.EDIT, conv.conversation_id, {"body": "kept", "target_op_id": kept.op_id}
        )
        with pytest.raises(UsageError, match="depend on it"):
            store.cancel(kept.op_id)  # the edit names it
        with pytest.raises(UsageError, match="queue another"):
            store.cancel(edit.op_id)
        # Claimed once: the push may have reached the server.
        claimed = {i.op_id for i in store.claim()}
        assert conv.op_id in claimed
        store.mark_retry(claimed, "unavailable", 0.0)
        with pytest.raises(UsageError, match="may have applied"):
            store.cancel(conv.op_id)


# --- two engines, offline -----------------------------------------------------------------


async def test_cancel_offline_then_both_stores_converge(make_engine: Any, server: Any) -> None:
    alice = await make_engine("alice")
    bob = await make_engine("bob")
    conv = await alice.create_conversation("Cancel", members=["bob"])
    assert await alice.wait_for_pending(10)
    await server.stop()
    await eventually(lambda: alice.state is not ConnectionState.LIVE)
    keep = await alice.send(conv.id, "keep")
    gone = await alice.send(conv.id, "changed my mind")
    draft = await alice.create_conversation("Never mind", members=["bob"])
    assert bodies(alice, conv.id) == ["keep", "changed my mind"]
    assert gone.op_id is not None
    cancelled = await alice.cancel(gone.op_id)
    assert cancelled.kind is OpKind.SEND
    draft_op = [i for i in alice.store.outbox() if i.conversation_id == draft.id][0]
    await alice.cancel(draft_op.op_id)
    assert bodies(alice, conv.id) == ["keep"]
    assert not alice.store.has_conversation(draft.id)
    await server.start()
    assert await alice.wait_for_pending(15)
    await eventually(lambda: bodies(bob, conv.id) == ["keep"], timeout=15)
    assert server_bodies(server, conv.id) == ["keep"] == bodies(alice, conv.id)
    assert not bob.store.has_conversation(draft.id)
    assert server.state.snapshot(draft.id, "alice") is None
    # Sent and acknowledged: a clear refusal, nothing changes.
    assert keep.op_id is not None
    with pytest.raises(UsageError, match="already sent"):
        await alice.cancel(keep.op_id)
    assert bodies(alice, conv.id) == ["keep"]


async def test_members_added_and_removed_offline_converge(make_engine: Any, server: Any) -> None:
    alice = await make_engine("alice")
    bob = await make_engine("bob")
    carol = await make_engine("carol")
    conv = await alice.create_conversation("Members", members=["bob"])
    await alice.send(conv.id, "before")
    assert await alice.wait_for_pending(10)
    await server.stop()
    await eventually(lambda: alice.state is not ConnectionState.LIVE)
    added = await alice.add_members(conv.id, ["carol"])
    removed = await alice.remove_members(conv.id, ["bob"])
    assert [i.kind for i in added + removed] == [OpKind.ADD_MEMBER, OpKind.REMOVE_MEMBER]
    with pytest.raises(UsageError):
        await alice.add_members(conv.id, ["not a name"])
    await server.start()
    assert await alice.wait_for_pending(15)
    assert server.state.members(conv.id) == ("alice", "carol")

    def members(engine: Any) -> tuple[str, ...]:
        try:
            return tuple(engine.store.conversation(conv.id).members)
        except NotFound:  # a conversation one has left is no longer listed
            return ()

    await eventually(lambda: members(alice) == members(carol) == ("alice", "carol"), timeout=15)
    # A new member's live stream starts at the addition; older messages come from history.
    page = await carol.messages(conv.id)
    assert [m.body for m in page.messages] == ["before"]
    await eventually(lambda: members(bob) == (), timeout=15)
    assert conv.id not in {c.id for c in await bob.conversations()}
    # Replayed after a lost answer: the same op ids apply nothing twice.
    head = server.state.head
    for item in added + removed:
        alice.store.enqueue(item.kind, item.conversation_id, item.payload, op_id=item.op_id)
    assert await alice.wait_for_pending(5)
    assert server.state.head == head


async def test_replies_offline_converge_with_the_server_id(make_engine: Any, server: Any) -> None:
    alice = await make_engine("alice")
    bob = await make_engine("bob")
    conv = await alice.create_conversation("Replies", members=["bob"])
    first = await alice.send(conv.id, "lunch?")
    assert await alice.wait_for_pending(10)
    await server.stop()
    await eventually(lambda: alice.state is not ConnectionState.LIVE)
    assert first.op_id is not None
    acked = alice.store.message_by_op(first.op_id)
    assert acked is not None and acked.id is not None
    by_id = await alice.reply(conv.id, "noon?", acked.id)  # acknowledged: by server id
    assert by_id.reply_to == acked.id
    pending = await alice.send(conv.id, "or 1pm")
    assert pending.op_id is not None
    by_op = await alice.reply(conv.id, "whichever", pending.op_id)  # still pending: by op id
    assert by_op.reply_to == pending.op_id
    with pytest.raises(NotFound):
        await alice.reply(conv.id, "x", "no-such-message")
    await server.start()
    assert await alice.wait_for_pending(15)
    sent_pending = alice.store.message_by_op(pending.op_id)
    assert sent_pending is not None and sent_pending.id is not None

    def replies(engine: Any) -> dict[str, str | None]:
        return {m.body: m.reply_to for m in engine.store.messages(conv.id)}

    expected = {"lunch?": None, "noon?": acked.id, "or 1pm": None, "whichever": sent_pending.id}
    await eventually(lambda: replies(alice) == replies(bob) == expected, timeout=15)
    wire = [m for m in server.state.all_events() if m.get("type") == "message_received"]
    assert {e["body"]: e.get("reply_to") for e in wire if e["conversation_id"] == conv.id} == {
        **expected
    }


async def test_reactions_offline_converge_without_loss_or_doubles(
    make_engine: Any, server: Any, tmp_path: Path
) -> None:
    alice = await make_engine("alice")
    bob = await make_engine("bob")
    conv = await alice.create_conversation("Reactions", members=["bob"])
    sent = await alice.send(conv.id, "pizza?")
    assert await alice.wait_for_pending(10) and sent.op_id is not None
    acked = alice.store.message_by_op(sent.op_id)
    assert acked is not None and acked.id is not None
    await eventually(lambda: bodies(bob, conv.id) == ["pizza?"])
    await server.stop()
    await eventually(lambda: bob.state is not ConnectionState.LIVE)
    await eventually(lambda: alice.state is not ConnectionState.LIVE)
    # Offline, both react; bob changes his mind about one; alice reacts twice with the same.
    await bob.react(acked.id, "+1")
    await bob.react(acked.id, "pizza")
    await bob.react(acked.id, "pizza", remove=True)
    await alice.react(sent.op_id, "+1")  # her own send, named by its op id once acknowledged
    await alice.react(acked.id, "+1")
    assert bob.store.message(acked.id).reactions == {"+1": ("bob",)}  # shown at once
    with pytest.raises(UsageError):
        await alice.react(acked.id, "two words")
    pending = await alice.send(conv.id, "not yet sent")
    with pytest.raises(UsageError, match="not sent yet"):
        await alice.react(str(pending.op_id), "+1")
    await server.start()
    assert await alice.wait_for_pending(15) and await bob.wait_for_pending(15)
    expected = {"+1": ("alice", "bob")}

    def reactions(engine: Any) -> dict[str, tuple[str, ...]]:
        found = engine.store.message(acked.id)
        return {} if found is None else dict(found.reactions)

    await eventually(lambda: reactions(alice) == reactions(bob) == expected, timeout=15)
    # The server's log, replayed into a fresh store in small pages, gives the same set.
    async with SyncEngine(tmp_path / "fresh.db", **{**FAST, "page_size": 2}) as fresh:
        await fresh.login(server.url, "alice", "alice-password")
        await eventually(lambda: reactions(fresh) == expected, timeout=15)


async def test_read_by_on_ones_own_messages_after_an_offline_read(
    make_engine: Any, server: Any
) -> None:
    alice = await make_engine("alice")
    bob = await make_engine("bob")
    carol = await make_engine("carol")
    conv = await alice.create_conversation("Receipts", members=["bob", "carol"])
    one = await alice.send(conv.id, "one")
    two = await alice.send(conv.id, "two")
    assert await alice.wait_for_pending(10)
    await eventually(lambda: bodies(bob, conv.id) == ["one", "two"])
    await eventually(lambda: bodies(carol, conv.id) == ["one", "two"])
    seqs = {m.body: m.seq for m in bob.store.messages(conv.id)}
    await server.stop()
    await eventually(lambda: bob.state is not ConnectionState.LIVE)
    await bob.mark_read(conv.id)  # offline: queued
    await carol.mark_read(conv.id, seqs["one"])
    await server.start()

    def read_by(engine: Any) -> dict[str, tuple[str, ...]]:
        return {m.body: m.read_by for m in engine.store.messages(conv.id)}

    expected = {"one": ("bob", "carol"), "two": ("bob",)}
    await eventually(lambda: read_by(alice) == expected, timeout=15)
    # Only on one's own messages: bob's store shows nothing for alice's.
    assert read_by(bob) == {"one": (), "two": ()}
    assert alice.store.message_by_op(str(two.op_id)).read_by == ("bob",)
    assert one.read_by == ()  # a fresh echo has been read by nobody
