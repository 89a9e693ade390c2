"""SyncEngine itself against a real Synapse, with matrix-nio as the independent client.

The store, the outbox, the cursor and the live loop are the engine's; only the transport is
Matrix's. What the engine sends, nio sees exactly once; what nio does, the engine stores.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from syncengine import SyncEngine
from syncengine.models import ConnectionState
from syncengine.transport.matrix import MatrixTransport
from tests.matrix.conftest import PASSWORD
from tests.matrix.helpers import bodies_by_op, nio_join_all, nio_timeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def eventually(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Wait until ``predicate()`` (sync or async) holds."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return
            await asyncio.sleep(interval)


def matrix_engine(db: Path, **options: Any) -> SyncEngine:
    """An engine whose transport is Matrix (``transport_factory``), quick to retry."""
    return SyncEngine(
        db,
        transport_factory=lambda url: MatrixTransport(url, timeout_s=5.0, live_timeout_ms=2000),
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
        **options,
    )


def bodies(engine: SyncEngine, cid: str) -> list[str]:
    return [m.body for m in engine.store.messages(cid, limit=10_000)]


async def room_of(nio: Any, cid: str) -> str:
    """The room nio joined whose syncengine conversation id is ``cid``."""
    await nio_join_all(nio)
    for room_id in nio.rooms:
        state = await nio.room_get_state_event(room_id, "net.syncengine.conversation", "")
        if getattr(state, "content", {}).get("id") == cid:
            return str(room_id)
    raise AssertionError(f"no room for {cid}")


async def test_engine_chats_with_nio_both_ways(synapse, new_user, nio_client, tmp_path) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    async with matrix_engine(tmp_path / "alice.db") as engine:
        await engine.login(synapse.url, alice, PASSWORD, device="PHONE")
        assert engine.user == f"@{alice}:{synapse.server_name}"  # the Matrix identity
        assert await engine.wait_for_state(ConnectionState.LIVE, timeout=30)
        conv = await engine.create_conversation("both ways", [bob])  # a localpart
        sent = await engine.send(conv.id, "hello from the engine")
        assert await engine.wait_for_pending(timeout=30)
        nio = await nio_client(bob)
        room_id = await room_of(nio, conv.id)
        assert bodies_by_op(await nio_timeline(nio, room_id)) == {sent.op_id: 1}
        # nio -> engine, over the live link
        await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi alice"})
        await eventually(lambda: "hi alice" in bodies(engine, conv.id))
        assert bodies(engine, conv.id) == ["hello from the engine", "hi alice"]
        stored = engine.store.messages(conv.id, limit=10)
        assert all(m.seq is not None for m in stored)  # the store numbered them
        assert [m.seq for m in stored] == sorted(m.seq for m in stored)
        assert stored[0].id and stored[0].id.startswith("$")  # the echo got its event id
        # the opaque cursor is a token, persisted in its own column
        assert isinstance(engine.store.cursor(), str)
        members = engine.store.conversation(conv.id).members
        assert f"@{bob}:{synapse.server_name}" in members


async def test_offline_sends_while_synapse_is_stopped_are_delivered_once(
    synapse, new_user, nio_client, tmp_path
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    async with matrix_engine(tmp_path / "alice.db") as engine:
        await engine.login(synapse.url, alice, PASSWORD, device="PHONE")
        conv = await engine.create_conversation("offline", [bob])
        assert await engine.wait_for_pending(timeout=30)
        synapse.stop()
        try:
            ops = [(await engine.send(conv.id, f"offline {i}")).op_id for i in range(5)]
            await eventually(lambda: engine.state is not ConnectionState.LIVE)
            assert engine.store.health().pending == 5
        finally:
            synapse.restart()
        assert await engine.wait_for_pending(timeout=60)
        await eventually(
            lambda: all(m.id for m in engine.store.messages(conv.id, limit=10)), timeout=30
        )
        nio = await nio_client(bob)
        room_id = await room_of(nio, conv.id)
        assert bodies_by_op(await nio_timeline(nio, room_id)) == {op: 1 for op in ops}
        assert bodies(engine, conv.id) == [f"offline {i}" for i in range(5)]


async def test_catch_up_of_500_missed_messages_through_the_engine(
    synapse, new_user, nio_client, tmp_path
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    db = tmp_path / "alice.db"
    async with matrix_engine(db) as engine:
        await engine.login(synapse.url, alice, PASSWORD, device="PHONE")
        conv = await engine.create_conversation("catch-up", [bob])
        assert await engine.wait_for_pending(timeout=30)
        await eventually(lambda: engine.state is ConnectionState.LIVE)
    nio = await nio_client(bob)
    room_id = await room_of(nio, conv.id)
    sent = []
    for i in range(500):  # while the engine is closed: a gappy sync (timeline limit 100)
        body = f"missed {i:03d}"
        await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        sent.append(body)
    async with matrix_engine(db) as engine:
        await eventually(lambda: len(bodies(engine, conv.id)) >= 500, timeout=120)
        assert bodies(engine, conv.id) == sent  # in order, each once
        await eventually(lambda: engine.state is ConnectionState.LIVE)


async def test_edits_deletes_receipts_typing_presence_both_ways(
    synapse, new_user, nio_client, tmp_path
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    bob_id = f"@{bob}:{synapse.server_name}"
    async with matrix_engine(tmp_path / "alice.db") as engine:
        await engine.login(synapse.url, alice, PASSWORD, device="PHONE")
        conv = await engine.create_conversation("patches", [bob])
        first = await engine.send(conv.id, "first")
        doomed = await engine.send(conv.id, "doomed")
        # by op id, queued before the sends are acknowledged: resolved through the store
        await engine.edit(conv.id, "first, edited", target_op_id=first.op_id)
        await engine.delete(conv.id, target_op_id=doomed.op_id)
        assert await engine.wait_for_pending(timeout=30)
        nio = await nio_client(bob)
        room_id = await room_of(nio, conv.id)
        seen = await nio_timeline(nio, room_id)
        edits = [
            e
            for e in seen
            if (e["content"].get("m.relates_to") or {}).get("rel_type") == "m.replace"
        ]
        assert [e["content"]["m.new_content"]["body"] for e in edits] == ["first, edited"]
        assert len([e for e in seen if e["type"] == "m.room.redaction"]) == 1
        await eventually(lambda: bodies(engine, conv.id)[:1] == ["first, edited"])
        # nio -> engine: a message, its edit, a redaction, a receipt
        theirs = await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        await nio.room_send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": "* hi there",
                "m.new_content": {"msgtype": "m.text", "body": "hi there"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": theirs.event_id},
            },
        )
        await eventually(lambda: "hi there" in bodies(engine, conv.id))
        mine = engine.store.message_by_op(first.op_id)
        assert mine is not None and mine.id
        await nio.update_receipt_marker(room_id, mine.id)
        await eventually(lambda: _read_by(engine, conv.id, bob_id) >= (mine.seq or 0))
        await nio.room_redact(room_id, theirs.event_id)
        await eventually(lambda: "hi there" not in bodies(engine, conv.id))
        # engine -> nio: our read receipt (a store seq, sent as an event id)
        await engine.mark_read(conv.id)
        assert await engine.wait_for_pending(timeout=30)
        await eventually(lambda: _nio_receipt_users(nio, room_id, engine.user), timeout=30)
        # typing both ways
        await engine.set_typing(conv.id, True)
        await eventually(lambda: _nio_typing(nio, room_id, engine.user), timeout=30)
        await nio.room_typing(room_id, True, timeout=30_000)
        await eventually(
            lambda: any(t.user == bob_id for t in engine.store.typing(conv.id)), timeout=30
        )
        # presence both ways
        await engine.set_presence("away")
        await eventually(lambda: _nio_presence(nio, engine.user, "unavailable"), timeout=30)
        await nio.set_presence("unavailable")
        await eventually(
            lambda: (p := engine.store.presence(bob_id)) is not None and p.status.value == "away",
            timeout=40,
        )


def _read_by(engine: SyncEngine, cid: str, user: str) -> int:
    row = engine.store._read(
        lambda c: c.execute(
            "SELECT read_seq FROM reads WHERE conversation_id = ? AND user = ?", (cid, user)
        ).fetchone()
    )
    return int(row[0]) if row else -1


async def _nio_receipt_users(nio: Any, room_id: str, user: str) -> bool:
    resp = await nio.sync(timeout=0, full_state=False)
    room = resp.rooms.join.get(room_id)
    if room is None:
        return False
    users = {
        r.user_id
        for ev in room.ephemeral
        if type(ev).__name__ == "ReceiptEvent"
        for r in ev.receipts
    }
    return user in users


async def _nio_typing(nio: Any, room_id: str, user: str) -> bool:
    await nio.sync(timeout=0)
    room = nio.rooms.get(room_id)
    return room is not None and user in room.typing_users


async def _nio_presence(nio: Any, user: str, status: str) -> bool:
    resp = await nio.get_presence(user)
    return getattr(resp, "presence", None) == status


def _unique() -> str:
    return uuid.uuid4().hex[:8]


async def test_a_gap_past_the_cap_is_a_per_conversation_discontinuity(
    synapse, new_user, nio_client, tmp_path
) -> None:
    from syncengine.events import Discontinuity

    alice, bob = new_user("alice"), new_user("bob")
    db = tmp_path / "alice.db"

    def small(url: str) -> MatrixTransport:  # a gap fill capped at 20 events, pages of 10
        return MatrixTransport(
            url, timeout_s=5.0, live_timeout_ms=2000, timeline_limit=10, gap_cap=20
        )

    async with SyncEngine(db, transport_factory=small, backoff_base_s=0.05) as engine:
        await engine.login(synapse.url, alice, PASSWORD, device="PHONE")
        conv = await engine.create_conversation("gap", [bob])
        assert await engine.wait_for_pending(timeout=30)
        await eventually(lambda: engine.state is ConnectionState.LIVE)
    nio = await nio_client(bob)
    room_id = await room_of(nio, conv.id)
    for i in range(60):
        await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"g{i}"})
    seen: list[Discontinuity] = []
    async with SyncEngine(db, transport_factory=small, backoff_base_s=0.05) as engine:
        engine.on(Discontinuity, seen.append)
        await eventually(lambda: "g59" in bodies(engine, conv.id))
        await eventually(lambda: bool(seen))
        assert {d.conversation_id for d in seen} == {conv.id}
        got = bodies(engine, conv.id)
        assert got == sorted(got, key=lambda b: int(b[1:])) and len(got) < 60  # newest part
