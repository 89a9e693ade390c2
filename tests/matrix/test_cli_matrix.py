"""The ``syncengine`` command line against a real Synapse: ``login`` finds out that the
server is Matrix by itself, and the other commands work unchanged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.matrix.conftest import PASSWORD
from tests.matrix.helpers import bodies_by_op, nio_join_all, nio_timeline
from tests.test_cli import invoke, one_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def cli(db: Path, *args: str, input: str | None = None) -> Any:
    """One CLI command (in a thread: each command runs its own event loop), its JSON."""
    result = await asyncio.to_thread(invoke, "--db", str(db), "--json", *args, input=input)
    return one_json(result)


async def test_cli_login_auto_create_send_messages(synapse, new_user, nio_client, tmp_path):
    alice, bob = new_user("alice"), new_user("bob")
    db = tmp_path / "alice.db"
    account = await cli(db, "login", synapse.url, alice, "--device", "CLI", input=f"{PASSWORD}\n")
    assert account["protocol"] == "matrix"  # auto: the server answers /_matrix/client/versions
    assert account["user"] == f"@{alice}:{synapse.server_name}"
    conv = await cli(db, "create", "from the cli", "--member", bob)  # a localpart
    sent = await cli(db, "send", conv["id"], "hello from the cli")
    await cli(db, "sync")
    messages = await cli(db, "messages", conv["id"])
    assert [m["body"] for m in messages] == ["hello from the cli"]
    assert messages[0]["id"].startswith("$") and messages[0]["state"] == "sent"
    nio = await nio_client(bob)
    await nio_join_all(nio)
    [room_id] = list(nio.rooms)
    await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi cli"})
    assert bodies_by_op(await nio_timeline(nio, room_id)) == {sent["op_id"]: 1}
    await cli(db, "sync")
    messages = await cli(db, "messages", conv["id"])
    assert [m["body"] for m in messages] == ["hello from the cli", "hi cli"]
    status = await cli(db, "status")
    assert status["user"] == f"@{alice}:{synapse.server_name}"
    # a full user id works as a member too, and --protocol matrix is accepted explicitly
    other = tmp_path / "bob.db"
    await cli(other, "login", synapse.url, bob, "--protocol", "matrix", input=f"{PASSWORD}\n")
    second = await cli(other, "create", "by id", "--member", f"@{alice}:{synapse.server_name}")
    await cli(other, "sync")
    await cli(db, "sync")
    await cli(db, "sync")  # the first sync joins the invite, the next reads the room
    titles = {c["id"]: c["title"] for c in await cli(db, "conversations")}
    assert titles.get(second["id"]) == "by id", json.dumps(titles)


def _state(db: Path) -> str:
    from syncengine.store import Store

    with Store(db) as store:
        return str(store.get_meta("state"))


async def test_the_daemon_syncs_live_with_matrix(synapse, new_user, nio_client, tmp_path):
    from tests.test_daemon import daemon_process, stop

    alice, bob = new_user("alice"), new_user("bob")
    db = tmp_path / "alice.db"
    await cli(db, "login", synapse.url, alice, input=f"{PASSWORD}\n")
    conv = await cli(db, "create", "daemon", "--member", bob)
    with daemon_process(db) as proc:
        sent = await cli(db, "send", conv["id"], "via the daemon")
        nio = await nio_client(bob)

        async def nio_sees() -> bool:
            await nio_join_all(nio)
            rooms = list(nio.rooms)
            return bool(rooms) and bodies_by_op(await nio_timeline(nio, rooms[0])) == {
                sent["op_id"]: 1
            }

        async with asyncio.timeout(60):
            while not await nio_sees():
                await asyncio.sleep(0.2)
        [room_id] = list(nio.rooms)
        await nio.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "to daemon"})
        async with asyncio.timeout(60):
            while True:  # the daemon's live /sync loop stores it; the CLI reads the store
                bodies = [m["body"] for m in await cli(db, "messages", conv["id"])]
                if "to daemon" in bodies:
                    break
                await asyncio.sleep(0.2)
        assert bodies == ["via the daemon", "to daemon"]
        assert await asyncio.to_thread(_state, db) == "live"
        code, _, err = await asyncio.to_thread(stop, proc)
        assert code == 0, err
