"""Issue 12, case 2: the resync after a ``410`` (cursor older than the server's retention)
must leave the store equal to the server.

The server keeps only the last 30 events. bob's engine sees the conversation, closes, and
while it is away alice (over HTTP) changes things and sends enough to expire bob's cursor;
bob's engine then opens again, gets ``410`` and resyncs. Each scenario proves one part of
"every conversation of the user equals the server after a discontinuity" (a deletion, a first
edit, a new title and a new member already hold today: a passing test pins them):

- an edit of a message bob had already seen edited, a deletion, a new title and a new member:
  the store shows the server's state (today the older edit stays: the resync's copy of an
  edited message loses against the edit the store already holds);
- bob's own read position, moved by his other device while this one was away: read_seq and the
  unread count equal the server's (today the snapshot's read position is ignored);
- a conversation bob leaves (from his phone) while the resync runs: it answers ``404`` on
  history; the conversation is removed and the resync goes on, the engine never FAILED (today
  the 404 stops the sync loop in FAILED);
- a resync at a tight rate limit (2 requests/s, burst 4) with 2,000 messages of history: it
  finishes and new events arrive (today each 429 restarts the resync from the newest page, so
  it never finishes and the cursor never moves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from syncengine import ConnectionState, ConnectionStateChanged, Discontinuity, SyncEngine
from syncengine.server.testing import run_server
from tests.conftest import FAST
from tests.scenarios.conftest import (
    SCN_CONVERGE_S,
    ScnClient,
    ScnEngineFactory,
    ScnMiddlebox,
    scn_diff,
    scn_server_view,
    scn_store_view,
    scn_until,
)

pytestmark = [pytest.mark.integration]

RETENTION = 30


class Watch:
    """The Discontinuity events and connection states an engine reports."""

    def __init__(self, engine: SyncEngine) -> None:
        self.discontinuities: list[Discontinuity] = []
        self.states: list[ConnectionState] = []
        engine.on(Discontinuity, self.discontinuities.append)
        engine.on(ConnectionStateChanged, lambda ev: self.states.append(ev.new))


async def expire_cursor(srv: Any, alice: ScnClient, cid: str, bob_cursor: int) -> None:
    """alice sends enough for the server to forget bob's cursor."""
    await alice.send_many(cid, [f"filler {i}" for i in range(RETENTION * 2)])
    assert srv.state.oldest_pos > bob_cursor + 1, "bob's cursor did not expire"


@pytest.mark.timeout(60)
async def test_resync_applies_deletes_titles_members_and_first_edits(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    """Holds today: the parts of "store equals server" that the resync already gets right
    (a deletion, a first edit, a new title, a new member). Kept as a pin."""
    async with (
        run_server(tmp_path / "srv", retention=RETENTION) as srv,
        ScnClient(srv.url, "alice") as alice,
    ):
        cid = await alice.create("Before", ["bob"])
        m1 = await alice.send(cid, "m1")
        m2 = await alice.send(cid, "m2")
        bob = await scn_engines(srv.url, "bob")
        db = bob.db_path
        await scn_until(lambda: bob.store.message_count(cid) == 2, SCN_CONVERGE_S, "bob has 2")
        cursor = bob.store.cursor()
        await bob.close()

        await alice.edit(cid, m1["message_id"], "m1 edited once")
        await alice.delete(cid, m2["message_id"])
        await alice.rename(cid, "After")
        await alice.add_member(cid, "carol")
        await expire_cursor(srv, alice, cid, cursor)

        bob = SyncEngine(db, **FAST)
        watch = Watch(bob)
        async with bob:
            await scn_until(lambda: watch.discontinuities, SCN_CONVERGE_S, "bob resyncs")
            assert await bob.wait_for_state(ConnectionState.LIVE, SCN_CONVERGE_S)
            truth = scn_server_view(srv.state.all_messages(cid))
            mine = scn_store_view(bob, cid)
            assert mine == truth, scn_diff(mine, truth)
            conv = next(c for c in await bob.conversations() if c.id == cid)
            assert (conv.title, conv.members) == ("After", ("alice", "bob", "carol"))
            assert len(watch.discontinuities) == 1


@pytest.mark.timeout(60)
async def test_resync_store_equals_server_with_edits_deletes_title_members(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    async with (
        run_server(tmp_path / "srv", retention=RETENTION) as srv,
        ScnClient(srv.url, "alice") as alice,
    ):
        cid = await alice.create("Before", ["bob"])
        m1 = await alice.send(cid, "m1")
        m2 = await alice.send(cid, "m2")
        await alice.send(cid, "m3")
        await alice.edit(cid, m1["message_id"], "m1 edit 1")

        bob = await scn_engines(srv.url, "bob")
        db = bob.db_path
        await scn_until(
            lambda: [r[3] for r in scn_store_view(bob, cid)][:1] == ["m1 edit 1"],
            SCN_CONVERGE_S,
            "bob sees the first edit",
        )
        cursor = bob.store.cursor()
        await bob.close()

        await alice.edit(cid, m1["message_id"], "m1 edit 2")
        await alice.delete(cid, m2["message_id"])
        await alice.rename(cid, "After")
        await alice.add_member(cid, "carol")
        await expire_cursor(srv, alice, cid, cursor)

        bob = SyncEngine(db, **FAST)
        watch = Watch(bob)
        async with bob:
            await scn_until(lambda: watch.discontinuities, SCN_CONVERGE_S, "bob resyncs")
            assert await bob.wait_for_state(ConnectionState.LIVE, SCN_CONVERGE_S)
            # Every difference at once, so the failure shows them all.
            problems = []
            truth = scn_server_view(srv.state.all_messages(cid))
            mine = scn_store_view(bob, cid)
            if mine != truth:
                problems.append(f"messages: {scn_diff(mine, truth)}")
            conv = next(c for c in await bob.conversations() if c.id == cid)
            server_conv = (await alice.conversations())[cid]
            if (conv.title, list(conv.members)) != (server_conv["title"], server_conv["members"]):
                problems.append(
                    f"conversation: store {conv.title!r} {conv.members}, "
                    f"server {server_conv['title']!r} {server_conv['members']}"
                )
            if len(watch.discontinuities) != 1:
                problems.append(f"{len(watch.discontinuities)} Discontinuity events, not 1")
            assert not problems, problems


@pytest.mark.timeout(60)
async def test_resync_takes_own_read_position_from_another_device(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    async with (
        run_server(tmp_path / "srv", retention=RETENTION) as srv,
        ScnClient(srv.url, "alice") as alice,
        ScnClient(srv.url, "bob", device="phone") as phone,
    ):
        cid = await alice.create("Reads", ["bob"])
        await alice.send_many(cid, [f"early {i}" for i in range(20)])
        bob = await scn_engines(srv.url, "bob")
        db = bob.db_path
        await scn_until(
            lambda: bob.store.message_count(cid) == 20, SCN_CONVERGE_S, "bob sees 20 messages"
        )
        cursor = bob.store.cursor()
        await bob.close()

        await expire_cursor(srv, alice, cid, cursor)  # 60 more, unread on every device
        read_upto = srv.state.all_messages(cid)[-10]["seq"]  # bob's phone reads all but 9
        await phone.mark_read(cid, read_upto)
        await alice.send_many(cid, [f"late {i}" for i in range(RETENTION)])

        server_conv = (await phone.conversations())[cid]
        server_unread = sum(
            1
            for m in srv.state.all_messages(cid)
            if m["sender"] != "bob" and not m["deleted"] and m["seq"] > server_conv["read_seq"]
        )
        assert server_conv["read_seq"] == read_upto and server_unread == 9 + RETENTION

        bob = SyncEngine(db, **FAST)
        watch = Watch(bob)
        async with bob:
            await scn_until(lambda: watch.discontinuities, SCN_CONVERGE_S, "bob resyncs")
            assert await bob.wait_for_state(ConnectionState.LIVE, SCN_CONVERGE_S)
            conv = next(c for c in await bob.conversations() if c.id == cid)
            assert (conv.read_seq, conv.unread) == (server_conv["read_seq"], server_unread), (
                f"store read_seq {conv.read_seq} unread {conv.unread}; "
                f"server read_seq {server_conv['read_seq']} unread {server_unread}"
            )


@pytest.mark.timeout(60)
async def test_conversation_left_during_resync_is_removed_and_resync_goes_on(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    async with (
        run_server(tmp_path / "srv", retention=RETENTION) as srv,
        ScnMiddlebox(srv.port) as box,
        ScnClient(srv.url, "alice") as alice,
        ScnClient(srv.url, "bob", device="phone") as phone,
    ):
        stay = await alice.create("Stay", ["bob"])
        leave = await alice.create("Leave", ["bob"])
        await alice.send(stay, "hello stay")
        await alice.send(leave, "hello leave")
        bob = await scn_engines(box.url, "bob")
        db = bob.db_path
        await scn_until(
            lambda: bob.store.message_count() == 2, SCN_CONVERGE_S, "bob sees both chats"
        )
        cursor = bob.store.cursor()
        await bob.close()
        await expire_cursor(srv, alice, stay, cursor)
        await alice.send(leave, "while bob was away")

        left: list[bool] = []

        async def bob_leaves() -> None:  # between the snapshot and this conversation's history
            await phone.remove_member(leave, "bob")
            left.append(True)

        # Whatever the resync asks about this conversation first (today its history; a
        # re-validation of what the store holds would ask too), bob has just left it.
        box.before(f"/v1/conversations/{leave}", bob_leaves)

        bob = SyncEngine(db, **FAST)
        watch = Watch(bob)
        async with bob:
            await scn_until(
                lambda: (watch.discontinuities and bob.state is ConnectionState.LIVE)
                or ConnectionState.FAILED in watch.states,
                SCN_CONVERGE_S,
                "bob resyncs",
                lambda: f"states {[s.value for s in watch.states]}",
            )
            assert left, "the resync never asked the server about the left conversation"
            assert ConnectionState.FAILED not in watch.states, (
                f"the engine FAILED: states {[s.value for s in watch.states]}"
            )
            assert [c.id for c in await bob.conversations()] == [stay]
            truth = scn_server_view(srv.state.all_messages(stay))
            assert scn_store_view(bob, stay) == truth, scn_diff(scn_store_view(bob, stay), truth)
            assert len(watch.discontinuities) == 1
            await alice.send(stay, "after the resync")
            await scn_until(
                lambda: "after the resync" in [r[3] for r in scn_store_view(bob, stay)],
                SCN_CONVERGE_S,
                "new messages arrive after the resync",
            )


@pytest.mark.timeout(90)
async def test_resync_at_the_rate_limit_finishes_and_new_events_arrive(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    history = 2000
    async with run_server(tmp_path / "srv", retention=RETENTION) as srv:
        async with ScnClient(srv.url, "alice") as alice:
            cid = await alice.create("Long", ["bob"])
            bob = await scn_engines(srv.url, "bob")
            db = bob.db_path
            await alice.send(cid, "first")
            await scn_until(
                lambda: bob.store.message_count(cid) == 1, SCN_CONVERGE_S, "bob is live"
            )
            cursor = bob.store.cursor()
            await bob.close()
            await alice.send_many(cid, [f"history {i}" for i in range(history)])
            assert srv.state.oldest_pos > cursor + 1

        # The same server, restarted with a tight per-user rate limit.
        await srv.stop()
        srv.config.rate_per_s = 2.0
        srv.config.rate_burst = 4
        await srv.start()

        bob = SyncEngine(db, **FAST)
        watch = Watch(bob)
        async with bob, ScnClient(srv.url, "alice") as alice:
            await scn_until(
                lambda: watch.discontinuities and bob.state is ConnectionState.LIVE,
                SCN_CONVERGE_S,
                "the resync finishes at 2 requests/s",
                lambda: f"{bob.store.message_count(cid)} of {history + 1} messages stored, "
                f"cursor {bob.store.cursor()}, states {[s.value for s in watch.states][-6:]}",
            )
            await alice.send(cid, "after the resync")
            await scn_until(
                lambda: "after the resync" in [r[3] for r in scn_store_view(bob, cid)[-5:]],
                SCN_CONVERGE_S,
                "a new message arrives after the resync",
            )
            assert len(watch.discontinuities) == 1
            assert bob.store.cursor() >= watch.discontinuities[0].new_cursor
