"""syncengine.local: what the CLI, the daemon and embedding apps share about one store.

Each piece is tested on its own: the lock and the state a reader reports need no server; the
waits are driven by writing the store as a daemon would; sync under the lock and the send
path use the reference server on loopback.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from syncengine import SyncEngine
from syncengine.errors import NotLoggedIn, NotSynced, OperationRejected, StoreLockHeld
from syncengine.events import MessageQueued
from syncengine.local import (
    StoreLock,
    ack,
    daemon_info,
    effective_state,
    open_store,
    poll_messages,
    queue_send,
    require_login,
    store_status,
    sync_store,
    wait_acknowledged,
    wait_for_daemon,
    writes,
)
from syncengine.models import ConnectionState, OpKind, OutboxState
from syncengine.paths import token_path
from syncengine.server.testing import run_server
from syncengine.store import Store
from tests.helpers_store import conv_updated, received

ME = "me"


def logged_in_store(db: Path) -> None:
    """A store with an account and a token file, as ``syncengine login`` leaves it."""
    with Store(db, user=ME) as store:
        store.set_meta(server="http://127.0.0.1:9", user=ME, device="d")
    token_path(db).write_text(json.dumps({"token": "t"}))


def queued_send(db: Path, body: str = "hi") -> tuple[str, str]:
    """A conversation with one queued send; returns (conversation id, op id)."""
    with Store(db, user=ME) as store:
        store.apply_events([received("c1", 1, 1)], cursor=1)
        item, _ = store.enqueue(OpKind.SEND, "c1", {"body": body})
    return "c1", item.op_id


# --- the lock ------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_try_acquire_does_not_wait(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    holder, other = StoreLock(db), StoreLock(db)
    assert holder.try_acquire()
    try:
        assert daemon_info(db)[0] is True
        assert other.try_acquire() is False
        with pytest.raises(StoreLockHeld):
            other.acquire(timeout=0)
    finally:
        holder.release()
    assert daemon_info(db) == (False, None)
    assert other.try_acquire()
    other.release()


# --- what a reader reports ----------------------------------------------------------------------


@pytest.mark.parametrize("state", ["connecting", "syncing", "live", "backoff"])
def test_a_connected_state_without_a_writer_is_offline(state: str) -> None:
    recorded = ConnectionState(state)
    assert effective_state(recorded, writer_running=False) is ConnectionState.OFFLINE
    assert effective_state(recorded, writer_running=True) is recorded


@pytest.mark.parametrize("state", ["offline", "failed"])
def test_a_resting_state_is_reported_as_recorded(state: str) -> None:
    recorded = ConnectionState(state)
    assert effective_state(recorded, writer_running=False) is recorded


def test_store_status_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(NotLoggedIn, match="no store at"):
        store_status(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    db = tmp_path / "a.db"
    logged_in_store(db)
    with Store(db) as store:
        store.set_state(ConnectionState.LIVE)  # left by a daemon that is gone
    status = store_status(db)
    assert status.state is ConnectionState.OFFLINE and status.daemon_running is False


def test_require_login_names_what_is_missing(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    Store(db).close()
    with open_store(db) as store, pytest.raises(NotLoggedIn, match="not logged in"):
        require_login(store, db)
    logged_in_store(db)
    token_path(db).unlink()
    with open_store(db) as store, pytest.raises(NotLoggedIn, match="logged out"):
        require_login(store, db)


# --- waiting for the daemon --------------------------------------------------------------------


async def test_wait_for_daemon_returns_once_live_and_pushed(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    logged_in_store(db)
    _cid, op_id = queued_send(db)
    with Store(db) as store:
        store.set_state(ConnectionState.SYNCING)
    waiter = asyncio.create_task(wait_for_daemon(db, 5, pid=123))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    with Store(db) as store:  # what the daemon does: push, then go LIVE
        store.claim()
        store.mark_failed(op_id, "too_large", "for the test")
        store.set_state(ConnectionState.LIVE)
    outcome = await asyncio.wait_for(waiter, 5)
    assert outcome.daemon is True and outcome.pending == 0 and outcome.failed == 1
    assert outcome.pushed is None and outcome.pulled is None


@pytest.mark.parametrize("state", ["backoff", "failed", "offline"])
async def test_wait_for_daemon_gives_up_at_once_when_it_cannot_sync(
    tmp_path: Path, state: str
) -> None:
    db = tmp_path / "a.db"
    logged_in_store(db)
    with Store(db) as store:
        store.set_state(ConnectionState(state))
    with pytest.raises(NotSynced, match=f"pid 7.*state {state}.*stays queued"):
        await asyncio.wait_for(wait_for_daemon(db, 30, pid=7), 5)


async def test_wait_for_daemon_times_out(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    logged_in_store(db)
    queued_send(db)
    with Store(db) as store:
        store.set_state(ConnectionState.LIVE)
    with pytest.raises(NotSynced, match=r"did not catch up within 0\.3 s"):
        await wait_for_daemon(db, 0.3, pid=7)


# --- waiting for one acknowledgement -----------------------------------------------------------


async def test_wait_acknowledged_while_another_process_syncs(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    logged_in_store(db)
    _cid, op_id = queued_send(db)
    with StoreLock(db):  # the daemon
        waiter = asyncio.create_task(wait_acknowledged(db, op_id, 5))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        with Store(db) as store:
            store.claim()
            store.mark_failed(op_id, "too_large", "body too long")
        with pytest.raises(OperationRejected) as caught:
            await asyncio.wait_for(waiter, 5)
    assert str(caught.value) == f"the server rejected {op_id}: too_large: body too long"
    assert caught.value.op_id == op_id and caught.value.code == "too_large"


async def test_wait_acknowledged_times_out_and_keeps_the_work(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    logged_in_store(db)
    _cid, op_id = queued_send(db)
    with StoreLock(db), pytest.raises(NotSynced, match="not acknowledged in time"):
        await wait_acknowledged(db, op_id, 0.3)
    with Store(db) as store:
        item = store.outbox_item(op_id)
    assert item is not None and item.state is OutboxState.PENDING


def test_check_acknowledged_reads_the_outbox_row(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    logged_in_store(db)
    _cid, op_id = queued_send(db)
    with pytest.raises(NotSynced, match="stays queued"):
        ack.check_acknowledged(db, op_id)
    ack.check_acknowledged(db, "pruned-long-ago")  # a missing row was SENT and pruned


# --- sync under the lock, and the send path --------------------------------------------------


async def test_sync_store_syncs_here_or_defers_to_the_lock_holder(tmp_path: Path) -> None:
    async with run_server(tmp_path / "server") as server:
        db = tmp_path / "a.db"
        async with SyncEngine(db, connect=False) as engine:
            await engine.login(server.url, "l-alice", "pw")
            conv = await engine.create_conversation("local", members=["l-bob"])
        message = await queue_send(db, conv.id, "pushed here")
        outcome = await sync_store(db, 10)
        assert outcome.daemon is False and outcome.pushed == 2 and outcome.pending == 0
        with Store(db) as store:
            item = store.outbox_item(message.op_id or "")
        assert item is not None and item.state is OutboxState.SENT
        assert daemon_info(db) == (False, None)  # the lock was released

        with StoreLock(db):  # a daemon that cannot sync: the CLI must not sync beside it
            with Store(db) as store:
                store.set_state(ConnectionState.BACKOFF)
            with pytest.raises(NotSynced, match="cannot sync now"):
                await sync_store(db, 5)


async def test_a_local_send_emits_message_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[MessageQueued] = []

    class Watched(SyncEngine):
        async def open(self) -> None:
            await super().open()
            self.on(MessageQueued, seen.append)

    monkeypatch.setattr(writes, "SyncEngine", Watched)
    db = tmp_path / "a.db"
    logged_in_store(db)
    queued_send(db)
    message = await queue_send(db, "c1", "through the engine")
    assert [e.message.op_id for e in seen] == [message.op_id]
    assert seen[0].message.body == "through the engine"


async def test_a_local_send_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(NotLoggedIn):
        await queue_send(tmp_path / "missing.db", "c1", "hi")
    assert not (tmp_path / "missing.db").exists()


# --- tail ----------------------------------------------------------------------------------------


async def test_poll_messages_yields_only_what_arrives_after_it_started(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    logged_in_store(db)
    with Store(db, user=ME) as store:
        store.apply_events([conv_updated("c1", 1, 1), received("c1", 2, 2, body="old")], cursor=2)
    stream = poll_messages(db, interval_s=0.02)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.1)
    with Store(db, user=ME) as store:
        store.apply_events(
            [
                received("c1", 3, 3, body="new"),
                conv_updated("c2", 1, 4),
                received("c2", 2, 5, body="other"),
            ],
            cursor=5,
        )
    got = [await asyncio.wait_for(first, 5), await asyncio.wait_for(stream.__anext__(), 5)]
    await stream.aclose()
    assert sorted(m.body for m in got) == ["new", "other"]


def test_no_public_name_is_shadowed_by_a_submodule() -> None:
    # Importing a submodule binds its name on the package: a function of the same name
    # (``tail`` in ``tail.py``) would then be replaced by the module.
    import pkgutil

    import syncengine.local as local

    modules = {m.name for m in pkgutil.iter_modules(local.__path__)}
    assert not modules & set(local.__all__)
