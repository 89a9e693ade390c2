"""The Matrix transport against a real Synapse, with matrix-nio as the independent client.

What our transport sends, nio sees exactly once; what nio does, our transport reads.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from syncengine.errors import AuthFailed, ServerUnavailable
from syncengine.events import (
    Checkpoint,
    Gap,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
    TypingStarted,
    TypingStopped,
    UserPresenceChanged,
)
from tests.matrix.helpers import (
    bodies_by_op,
    create_op,
    nio_join_all,
    nio_timeline,
    send_op,
    transport,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_login_with_a_persisted_device_and_refused_credentials(synapse, new_user) -> None:
    alice = new_user("alice")
    t = await transport(synapse.url, alice, "PHONE")
    assert t.device_id == "PHONE"
    assert t.user_id == f"@{alice}:{synapse.server_name}"
    again = await transport(synapse.url, alice, "PHONE")  # same device, new token
    assert again.device_id == "PHONE" and again.http.token != t.http.token
    with pytest.raises(AuthFailed):  # Synapse: 403 M_FORBIDDEN
        await t.login(alice, "wrong password", "PHONE")
    bad = await transport(synapse.url, alice, "PHONE")
    bad.set_token("not-a-token")
    bad.reader.user_id = t.user_id
    with pytest.raises(AuthFailed):  # 401 M_UNKNOWN_TOKEN
        await bad.pull("", 10)
    for x in (t, again, bad):
        await x.aclose()


async def test_replays_give_one_room_and_one_event(synapse, new_user, nio_client) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    t = await transport(synapse.url, alice, "DEV1")
    create = create_op([bob], "replays")
    cid = create["conversation_id"]
    [first] = await t.push([create])
    # A new login with the same device (a restarted app) replays the create and the send.
    t2 = await transport(synapse.url, alice, "DEV1")
    [again] = await t2.push([create])
    assert first.status == again.status == "applied"
    assert t.reader.conv_rooms[cid] == t2.reader.conv_rooms[cid]
    op = send_op(cid, "once")
    [sent] = await t.push([op])
    [replayed] = await t2.push([op])
    [changed] = await t2.push([{**op, "body": "a different body"}])  # same txnId: original
    assert sent.message_id == replayed.message_id == changed.message_id
    nio = await nio_client(bob)
    await nio_join_all(nio)
    room_id = t.reader.conv_rooms[cid]
    assert list(nio.rooms) == [room_id]  # one room, not two
    assert bodies_by_op(await nio_timeline(nio, room_id)) == {op["op_id"]: 1}
    await t.aclose()
    await t2.aclose()


async def test_catch_up_of_500_missed_messages_across_a_gappy_sync(
    synapse, new_user, nio_client
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    nio = await nio_client(alice)
    t_bob = await transport(synapse.url, bob, "DEV1", timeline_limit=10)
    create = create_op([bob], "catch-up")
    t_alice = await transport(synapse.url, alice, "DEV1")
    await t_alice.push([create])
    page = await t_bob.pull("", 100)  # joins the invite
    while page.has_more:
        page = await t_bob.pull(page.next, 100)
    since = page.next
    room_id = t_alice.reader.conv_rooms[create["conversation_id"]]
    for i in range(500):  # nio sends them: an independent client
        resp = await nio.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": f"m{i}"}
        )
        assert resp.event_id
    caught = await t_bob.pull(since, 100)
    bodies = [e.body for e in caught.events if isinstance(e, MessageReceived)]
    assert bodies == [f"m{i}" for i in range(500)]  # each once, in order, no gap left
    assert not any(isinstance(e, Gap) for e in caught.events)
    # Above the gap-fill cap: a Gap, then only the newest part.
    t_capped = await transport(synapse.url, bob, "DEV1", timeline_limit=10, gap_cap=100)
    capped = await t_capped.pull(since, 100)
    gaps = [e for e in capped.events if isinstance(e, Gap)]
    newest = [e.body for e in capped.events if isinstance(e, MessageReceived)]
    assert len(gaps) == 1 and gaps[0].conversation_id == create["conversation_id"]
    assert newest == [f"m{i}" for i in range(390, 500)]
    for x in (t_bob, t_alice, t_capped):
        await x.aclose()


async def _settle(t, since: str) -> tuple[list, str]:
    """Pull until no invite is pending; every event read and the last cursor."""
    events: list = []
    page = await t.pull(since, 100)
    events.extend(page.events)
    while page.has_more:
        page = await t.pull(page.next, 100)
        events.extend(page.events)
    return events, str(page.next)


async def test_edits_deletes_and_receipts_both_ways(synapse, new_user, nio_client) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    t = await transport(synapse.url, alice, "DEV1")
    create = create_op([bob], "both ways")
    cid = create["conversation_id"]
    await t.push([create])
    _, since = await _settle(t, "")
    nio = await nio_client(bob)
    await nio_join_all(nio)
    room_id = t.reader.conv_rooms[cid]
    # ours → nio: send, edit (by target op id), delete, read receipt
    op = send_op(cid, "hello")
    [sent] = await t.push([op])
    await t.push(
        [
            {
                "op_id": f"e-{uuid.uuid4()}",
                "kind": "edit",
                "conversation_id": cid,
                "target_op_id": op["op_id"],
                "body": "hello, edited",
            },
        ]
    )
    other = send_op(cid, "to delete")
    [doomed] = await t.push([other])
    await t.push(
        [
            {
                "op_id": f"d-{uuid.uuid4()}",
                "kind": "delete",
                "conversation_id": cid,
                "target_op_id": other["op_id"],
            }
        ]
    )
    seen = await nio_timeline(nio, room_id)
    edits = [
        e for e in seen if (e["content"].get("m.relates_to") or {}).get("rel_type") == "m.replace"
    ]
    assert [e["content"]["m.new_content"]["body"] for e in edits] == ["hello, edited"]
    assert edits[0]["content"]["m.relates_to"]["event_id"] == sent.message_id
    redactions = [e for e in seen if e["type"] == "m.room.redaction"]
    assert [r["content"].get("redacts", r.get("redacts")) for r in redactions] == [
        doomed.message_id
    ]
    # nio → ours: a message, its edit, a foreign edit of ours (ignored), a redaction, a receipt
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
    await nio.room_send(
        room_id,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* forged",
            "m.new_content": {"msgtype": "m.text", "body": "forged"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": sent.message_id},
        },
    )
    await nio.room_redact(room_id, theirs.event_id)
    await nio.update_receipt_marker(room_id, sent.message_id)
    events, since = await _settle(t, since)
    received = [
        e for e in events if isinstance(e, MessageReceived) and e.event_id == theirs.event_id
    ]
    assert len(received) == 1  # redacted before we synced: the server sends it emptied
    updates = [(e.message_id, e.body) for e in events if isinstance(e, MessageUpdated)]
    assert (theirs.event_id, "hi there") in updates
    assert all(body != "forged" for _, body in updates)  # the foreign edit is ignored
    deleted = [e.message_id for e in events if isinstance(e, MessageDeleted)]
    assert theirs.event_id in deleted
    receipts = [
        e
        for e in events
        if isinstance(e, ReadReceipt) and e.user == f"@{bob}:{synapse.server_name}"
    ]
    assert receipts and receipts[-1].read_event_id == sent.message_id
    # our receipt → nio sees m.receipt for alice
    await t.push(
        [
            {
                "op_id": f"r-{uuid.uuid4()}",
                "kind": "mark_read",
                "conversation_id": cid,
                "seq": 0,
                "event_id": theirs.event_id,
            }
        ]
    )
    resp = await nio.sync(timeout=0)
    receipts_seen = [
        ev for ev in resp.rooms.join[room_id].ephemeral if type(ev).__name__ == "ReceiptEvent"
    ]
    users = {r.user_id for ev in receipts_seen for r in ev.receipts}
    assert f"@{alice}:{synapse.server_name}" in users
    await t.aclose()


async def test_typing_and_presence_both_ways_over_the_live_link(
    synapse, new_user, nio_client
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    t = await transport(synapse.url, alice, "DEV1")
    create = create_op([bob], "typing")
    cid = create["conversation_id"]
    await t.push([create])
    _, since = await _settle(t, "")
    nio = await nio_client(bob)
    nio_since = await nio_join_all(nio)
    room_id = t.reader.conv_rooms[cid]
    link = await t.connect_live(since)
    try:

        async def next_of(kind, match=lambda e: True):
            async with asyncio.timeout(20):
                while True:
                    ev = await link.recv()
                    if isinstance(ev, kind) and match(ev):
                        return ev

        await next_of(Checkpoint)
        await nio.room_typing(room_id, True, timeout=10_000)
        started = await next_of(TypingStarted)
        assert started.conversation_id == cid and started.user == f"@{bob}:{synapse.server_name}"
        await nio.room_typing(room_id, False)
        assert (await next_of(TypingStopped)).user == started.user
        await nio.set_presence("unavailable")
        changed = await next_of(UserPresenceChanged, lambda e: e.user == started.user)
        assert changed.status == "away"
        msg = await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "live"})
        got = await next_of(MessageReceived)
        assert got.event_id == msg.event_id
        assert isinstance((await next_of(Checkpoint)).cursor, str)  # closes that response
        # ours → nio
        await link.send_typing(cid, True)
        await link.send_presence("away")
        resp = await nio.sync(timeout=0, since=nio_since)
        typing = [
            ev
            for ev in resp.rooms.join[room_id].ephemeral
            if type(ev).__name__ == "TypingNoticeEvent"
        ]
        assert typing and f"@{alice}:{synapse.server_name}" in typing[-1].users
        status = await nio.get_presence(f"@{alice}:{synapse.server_name}")
        assert status.presence == "unavailable"
    finally:
        await link.close()
        await t.aclose()


async def test_conversations_history_and_non_members(synapse, new_user, nio_client) -> None:
    alice, bob, eve = new_user("alice"), new_user("bob"), new_user("eve")
    t = await transport(synapse.url, alice, "DEV1")
    create = create_op([bob], "snapshot")
    cid = create["conversation_id"]
    await t.push([create])
    ops = [send_op(cid, f"h{i}") for i in range(5)]
    await t.push(ops)
    await t.push(
        [
            {
                "op_id": f"e-{uuid.uuid4()}",
                "kind": "edit",
                "conversation_id": cid,
                "target_op_id": ops[1]["op_id"],
                "body": "h1 edited",
            }
        ]
    )
    convs, head = await t.conversations()
    assert isinstance(head, str)
    [conv] = [c for c in convs if c["id"] == cid]
    assert conv["title"] == "snapshot"
    assert conv["members"] == sorted([f"@{alice}:localhost", f"@{bob}:localhost"])
    # Pages of 3 events, newest first (an edit takes a place in a page but is folded into its
    # original, so a page may hold fewer messages than the limit).
    bodies: list[str] = []
    page = await t.history(cid, None, 3)
    pages = 1
    bodies[:0] = [m.body for m in page.messages]
    while not page.end_of_history:
        page = await t.history(cid, page.prev, 3)
        bodies[:0] = [m.body for m in page.messages]
        pages += 1
    assert bodies == ["h0", "h1 edited", "h2", "h3", "h4"] and pages > 2
    t_eve = await transport(synapse.url, eve, "DEV1")
    [refused] = await t_eve.push([send_op(cid, "intruder")])
    assert refused.status == "rejected" and refused.code == "not_found"
    assert refused.status_code == 403
    await t.aclose()
    await t_eve.aclose()


async def test_pending_sends_survive_a_synapse_restart_each_once(
    synapse, new_user, nio_client
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    t = await transport(synapse.url, alice, "DEV1", timeout_s=5.0)
    create = create_op([bob], "restart")
    cid = create["conversation_id"]
    await t.push([create])
    acked = [send_op(cid, f"a{i}") for i in range(5)]
    await t.push(acked)
    pending = [send_op(cid, f"p{i}") for i in range(5)]
    synapse.stop()
    try:
        with pytest.raises(ServerUnavailable):
            await t.push(pending)
    finally:
        synapse.restart()
    # The engine replays whatever it is unsure of: the acked ones too.
    results = await t.push(acked + pending)
    assert [r.status for r in results] == ["applied"] * 10
    nio = await nio_client(bob)
    await nio_join_all(nio)
    counts = bodies_by_op(await nio_timeline(nio, t.reader.conv_rooms[cid]))
    assert counts == {op["op_id"]: 1 for op in acked + pending}
    await t.aclose()
