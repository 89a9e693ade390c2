"""Issue 12, case 4: rejected operations, re-added members, and op ids across devices.

Each scenario ends by comparing a store with the server, row by row:

- bob deletes, or edits, a message of alice's: the server answers ``403`` and the operation
  becomes FAILED; bob's store must then show the message as the server has it (today it stays
  hidden, or shows bob's forged text, for good);
- bob is removed from a conversation and added back: his store must hold what the server's
  history shows him, including the messages sent while he was out (today the pulls skip them
  and back-pagination only looks older than the lowest stored seq);
- alice's laptop and phone use the same op id for two different messages: the server keeps one
  message for that op id (the other device's operation is refused, its echo may stay visible
  as FAILED), and every store holds each server message once (today the server scopes op ids
  per device and keeps both);
- alice's store is restored from a backup on a new machine and logged in under a new device
  name: its queue, already pushed from the old device, must not be sent again (today: every
  message twice on the server).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from syncengine import MessageFailed, MessageState, SyncEngine, new_id
from tests.conftest import FAST
from tests.scenarios.conftest import (
    SCN_CONVERGE_S,
    ScnClient,
    ScnEngineFactory,
    scn_diff,
    scn_server_view,
    scn_store_view,
    scn_until,
)

pytestmark = [pytest.mark.integration]

#: How long a store may take to show the server's state once the rejection is known.
REPAIR_S = 5.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["delete", "edit"])
async def test_rejected_change_of_someone_elses_message_is_undone(
    server: Any, scn_engines: ScnEngineFactory, kind: str
) -> None:
    async with ScnClient(server.url, "alice") as alice:
        cid = await alice.create("Forgery", ["bob"])
        sent = await alice.send(cid, "alice's own words")
        bob = await scn_engines(server.url, "bob")
        failures: list[MessageFailed] = []
        bob.on(MessageFailed, failures.append)
        await scn_until(lambda: bob.store.message_count(cid) == 1, SCN_CONVERGE_S, "bob sees it")

        if kind == "delete":
            item = await bob.delete(cid, message_id=sent["message_id"])
        else:
            item = await bob.edit(cid, "bob's forged words", message_id=sent["message_id"])
        await scn_until(
            lambda: any(f.op_id == item.op_id for f in failures),
            SCN_CONVERGE_S,
            f"the server rejects bob's {kind}",
        )
        assert [f.code for f in failures] == ["forbidden"]

        truth = scn_server_view(server.state.all_messages(cid))
        assert truth[0][3:] == ("alice's own words", False)
        await scn_until(
            lambda: scn_store_view(bob, cid) == truth,
            REPAIR_S,
            f"bob's store shows the server's message after his {kind} was rejected",
            lambda: scn_diff(scn_store_view(bob, cid), truth),
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("live", [True, False], ids=["live", "polling"])
async def test_readded_member_holds_messages_sent_while_out(
    server: Any, scn_engines: ScnEngineFactory, live: bool
) -> None:
    # Polling, the re-add reaches bob by a pull (the catch-up's pages), not a live batch:
    # both paths must read back the history he missed while out.
    async with (
        ScnClient(server.url, "alice") as alice,
        ScnClient(server.url, "bob", device="phone") as bob_phone,
    ):
        cid = await alice.create("Out and in", ["bob"])
        await alice.send(cid, "before")
        bob = await scn_engines(server.url, "bob", live=live)
        await scn_until(lambda: bob.store.message_count(cid) == 1, SCN_CONVERGE_S, "bob sees it")

        await alice.remove_member(cid, "bob")
        await scn_until(
            lambda: cid not in [c.id for c in bob.store.conversations()],
            SCN_CONVERGE_S,
            "bob's store drops the conversation",
        )
        await alice.send_many(cid, [f"while bob was out {i}" for i in range(3)])
        await alice.add_member(cid, "bob")
        await alice.send(cid, "after")
        await scn_until(
            lambda: "after" in [r[3] for r in scn_store_view(bob, cid)],
            SCN_CONVERGE_S,
            "bob is back",
        )

        shown = scn_server_view(await bob_phone.history(cid))
        assert len(shown) == 5, "the server's history shows bob every message"
        await scn_until(
            lambda: scn_store_view(bob, cid) == shown,
            REPAIR_S,
            "bob's store holds what the server's history shows him",
            lambda: scn_diff(scn_store_view(bob, cid), shown),
        )
        page = await bob.messages(cid, limit=50)
        assert [m.body for m in page.messages] == [row[3] for row in shown]


@pytest.mark.timeout(60)
async def test_same_op_id_from_two_devices_of_one_user(
    tmp_path: Path, server: Any, scn_engines: ScnEngineFactory
) -> None:
    async with ScnClient(server.url, "bob") as bob:
        cid = await bob.create("Two devices", ["alice"])
        phone_db = tmp_path / "alice-phone.db"
        phone = await scn_engines(server.url, "alice", db=phone_db, device="phone")
        await scn_until(lambda: phone.store.has_conversation(cid), SCN_CONVERGE_S, "phone")
        await phone.close()
        laptop = await scn_engines(
            server.url, "alice", db=tmp_path / "alice-laptop.db", device="laptop"
        )
        await scn_until(lambda: laptop.store.has_conversation(cid), SCN_CONVERGE_S, "laptop")

        op_id = new_id()  # caller-chosen op ids are public API
        await laptop.send(cid, "from the laptop", op_id=op_id)
        assert await laptop.wait_for_pending(SCN_CONVERGE_S)
        async with SyncEngine(phone_db, connect=False, **FAST) as offline_phone:
            await offline_phone.send(cid, "from the phone", op_id=op_id)

        phone = await scn_engines(server.url, "alice", db=phone_db, login=False)
        failures: list[MessageFailed] = []
        phone.on(MessageFailed, failures.append)

        def once_everywhere() -> bool:
            on_server = [m for m in server.state.all_messages(cid) if m["op_id"] == op_id]
            assert len(on_server) <= 1, f"op id {op_id} on the server {len(on_server)} times: " + (
                str([(m["device"], m["body"]) for m in on_server])
            )
            truth = scn_server_view(server.state.all_messages(cid))
            phone_rows = scn_store_view(phone, cid)
            # The refused send may stay visible on the phone as its own FAILED echo (so the
            # user can see it and act); every server message is there once, as on the server.
            echoes = [m for m in phone.store.messages(cid, limit=1000) if m.seq is None]
            return (
                len(on_server) == 1
                and scn_store_view(laptop, cid) == truth
                and [r for r in phone_rows if r[1] is not None] == truth
                and all(
                    m.body == "from the phone" and m.state is MessageState.FAILED for m in echoes
                )
                and any(f.op_id == op_id for f in failures)
            )

        await scn_until(
            once_everywhere,
            SCN_CONVERGE_S,
            "one message for the op id on the server and in both stores; the phone's refused",
            lambda: "phone: "
            + scn_diff(scn_store_view(phone, cid), scn_server_view(server.state.all_messages(cid)))
            + f"; failures {failures}",
        )
        assert [m["body"] for m in server.state.all_messages(cid)] == ["from the laptop"]


@pytest.mark.timeout(60)
async def test_restored_store_under_a_new_device_name_sends_nothing_twice(
    tmp_path: Path, server: Any, scn_engines: ScnEngineFactory
) -> None:
    db = tmp_path / "alice.db"
    async with SyncEngine(db, connect=False, **FAST) as offline:
        await offline.login(server.url, "alice", "alice-password", device="old-laptop")
        cid = (await offline.create_conversation("Backup", members=["bob"])).id
        for i in range(5):
            await offline.send(cid, f"queued {i}")
    backup = tmp_path / "backup"
    backup.mkdir()
    for f in tmp_path.glob("alice.db*"):
        shutil.copy2(f, backup / f.name)

    old = await scn_engines(server.url, "alice", db=db, login=False)
    assert await old.wait_for_pending(SCN_CONVERGE_S)
    assert len(server.state.all_messages(cid)) == 5
    await old.close()  # the old laptop is gone

    for f in tmp_path.glob("alice.db*"):
        f.unlink()
    for f in backup.glob("alice.db*"):
        if not f.name.endswith(".token"):  # a new machine logs in again
            shutil.copy2(f, tmp_path / f.name)
    restored = await scn_engines(
        server.url, "alice", db=db, device="new-laptop", wait_live=False
    )

    def settled() -> bool:
        n = len(server.state.all_messages(cid))
        assert n <= 5, f"{n} messages on the server for 5 sends"
        h = restored.store.health()
        truth = scn_server_view(server.state.all_messages(cid))
        return h.pending == 0 and h.sending == 0 and scn_store_view(restored, cid) == truth

    await scn_until(
        settled,
        SCN_CONVERGE_S,
        "the restored store's queue is settled without a second copy",
        lambda: f"health {restored.store.health()}",
    )
    assert [m["body"] for m in server.state.all_messages(cid)] == [f"queued {i}" for i in range(5)]
