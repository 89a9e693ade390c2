"""The server storage contract: one suite every ``ServerStorage`` implementation must pass.

The ``backend`` fixture is parametrised over the implementations: SQLite, PostgreSQL (a
fresh database per test on the session's server, see ``tests/services/postgres.py``; skipped
where no PostgreSQL binaries exist), and the in-memory storage (dictionaries, reopened from
the same ``MemoryDatabase`` within a test). A new database plugs in by adding an opener to
``BACKENDS``: a function of a directory, a retention and a clock that returns a fresh (or
reopened) storage there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from syncengine.models import new_id
from syncengine.protocol import errors
from syncengine.protocol.events import MessageReceived
from syncengine.protocol.ops import MAX_MEMBERS
from syncengine.server import writes
from syncengine.server.storage import ServerStorage, SqliteStorage, WriteTx
from syncengine.server.storage.interface import ConversationRow, MessageRow, OpRecord
from syncengine.server.storage.memory import MemoryDatabase, MemoryStorage

Opener = Callable[..., ServerStorage]


def _open_sqlite(directory: Path, *, retention: int | None, clock: Callable[[], float]) -> Any:
    return SqliteStorage(directory / "server.sqlite3", retention=retention, clock=clock)


def _open_postgres(directory: Path, *, retention: int | None, clock: Callable[[], float]) -> Any:
    from syncengine.server.storage.postgres import PostgresStorage

    # One database per test directory: a reopen in the same test finds the same database.
    url = (directory / "postgres.url").read_text()
    return PostgresStorage(url, retention=retention, clock=clock)


_MEMORY: dict[Path, MemoryDatabase] = {}


def _open_memory(directory: Path, *, retention: int | None, clock: Callable[[], float]) -> Any:
    # A reopen in the same test directory finds the same database (a restart).
    database = _MEMORY.setdefault(directory, MemoryDatabase())
    return MemoryStorage(database, retention=retention, clock=clock)


BACKENDS: dict[str, Opener] = {
    "sqlite": _open_sqlite,
    "postgres": _open_postgres,
    "memory": _open_memory,
}


class Clock:
    """A settable clock (seconds)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """Opens storages of one implementation in one directory, and closes them all."""

    def __init__(self, opener: Opener, directory: Path) -> None:
        self.opener = opener
        self.directory = directory
        self.clock = Clock()
        self.opened: list[ServerStorage] = []

    def open(self, retention: int | None = None) -> ServerStorage:
        storage = self.opener(self.directory, retention=retention, clock=self.clock)
        self.opened.append(storage)
        return storage

    def close(self) -> None:
        for storage in self.opened:
            storage.close()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        (tmp_path / "postgres.url").write_text(request.getfixturevalue("postgres").fresh())
    b = Backend(BACKENDS[request.param], tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def store(backend: Backend) -> ServerStorage:
    return backend.open()


def create(store: ServerStorage, actor: str, members: tuple[str, ...], title: str = "t") -> str:
    cid = new_id()
    with store.write() as tx:
        created, _pos, _ts = writes.create_conversation(tx, actor, cid, title, members)
    assert created
    return cid


def send(store: ServerStorage, user: str, cid: str, body: str = "hi", device: str = "d") -> Any:
    op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": body}
    with store.write() as tx:
        return writes.apply_op(tx, user, device, op)


# --- users, devices, tokens ---------------------------------------------------------------


def test_users_and_passwords(store: ServerStorage) -> None:
    assert store.password_record("alice") is None
    assert store.create_user("alice", b"s1", b"h1", "scrypt:2:8:1")
    assert not store.create_user("alice", b"s2", b"h2", "scrypt:2:8:1")  # first one wins
    assert tuple(store.password_record("alice") or ()) == (b"s1", b"h1", "scrypt:2:8:1")
    store.set_password("alice", b"s3", b"h3", "scrypt:4:8:1")
    store.set_password("bob", b"s4", b"h4", "scrypt:4:8:1")
    assert tuple(store.password_record("alice") or ()) == (b"s3", b"h3", "scrypt:4:8:1")
    assert store.users() == ["alice", "bob"]


def test_block_lists(backend: Backend, store: ServerStorage) -> None:
    assert store.blocked_by("bob") == []
    store.set_blocked("bob", "mallory", True)
    store.set_blocked("bob", "mallory", True)  # idempotent
    store.set_blocked("bob", "eve", True)
    store.set_blocked("carol", "mallory", True)
    assert store.blocked_by("bob") == ["eve", "mallory"]
    with store.write() as tx:
        assert tx.blockers_of("mallory", ["alice", "bob", "carol"]) == ("bob", "carol")
        assert tx.blockers_of("alice", ["bob", "carol"]) == ()
        assert tx.blockers_of("mallory", [f"u{i}" for i in range(1200)]) == ()  # many names
    store.set_blocked("bob", "mallory", False)
    store.set_blocked("bob", "mallory", False)  # idempotent
    assert store.blocked_by("bob") == ["eve"]
    store.close()
    assert backend.open().blocked_by("carol") == ["mallory"]  # durable


def test_a_blocked_user_cannot_add_the_blocker(store: ServerStorage) -> None:
    store.set_blocked("bob", "mallory", True)
    with pytest.raises(errors.Forbidden, match="bob does not accept being added by mallory"):
        create(store, "mallory", ("bob", "carol"))
    cid = create(store, "mallory", ("carol", "mallory"))
    with store.write() as tx, pytest.raises(errors.Forbidden):
        writes.set_member(tx, "mallory", cid, "bob", present=True)
    with store.write() as tx:  # anyone else may add bob
        writes.set_member(tx, "carol", cid, "bob", present=True)
    assert store.members(cid) == ("bob", "carol", "mallory")
    with store.write() as tx:  # a member already there: nothing to refuse
        writes.set_member(tx, "mallory", cid, "bob", present=True)
    with store.write() as tx:  # removing is never refused
        writes.set_member(tx, "mallory", cid, "bob", present=False)


def test_tokens_authenticate_until_they_expire(backend: Backend, store: ServerStorage) -> None:
    store.create_user("alice", b"s", b"h", "p")
    token = store.issue_token("alice", "laptop", ttl_s=60)
    identity = store.authenticate(token)
    assert identity is not None
    user, device, expires_ms = identity
    assert (user, device) == ("alice", "laptop")
    assert expires_ms == store.now_ms() + 60_000
    assert store.authenticate(token + "x") is None
    backend.clock.now += 61
    assert store.authenticate(token) is None


def test_last_seen_is_kept(store: ServerStorage) -> None:
    store.create_user("alice", b"s", b"h", "p")
    store.set_last_seen("alice", 1234)
    assert store.last_seen(["alice", "ghost"]) == {"alice": 1234, "ghost": None}
    many = [f"u{i}" for i in range(1200)]  # more names than one statement may carry
    assert store.last_seen(many) == dict.fromkeys(many)


def test_time_never_goes_backwards(backend: Backend, store: ServerStorage) -> None:
    first = store.now_ms()
    backend.clock.now -= 3600
    assert store.now_ms() == first


# --- conversations and members ------------------------------------------------------------


def test_unknown_users_are_the_names_without_an_account(store: ServerStorage) -> None:
    store.create_user("bob", b"salt", b"hash", "p")
    with store.write() as tx:
        assert tx.unknown_users(["zed", "bob", "amy", "zed"]) == ["amy", "zed"]
        assert tx.unknown_users([]) == []
        cid = new_id()
        with pytest.raises(errors.UnknownUser):
            writes.create_conversation(tx, "alice", cid, "t", ("alice", "zed"), known_only=True)
        # The creator needs no account row to be known: they are the one logged in.
        created = writes.create_conversation(tx, "alice", cid, "t", ("alice", "bob"), known_only=True)
        assert created[0]
        with pytest.raises(errors.UnknownUser):
            writes.set_member(tx, "alice", cid, "zed", present=True, known_only=True)
        writes.set_member(tx, "alice", cid, "zed", present=False, known_only=True)  # a no-op
    assert store.members(cid) == ("alice", "bob")


def test_conversations_members_and_snapshots(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice", "bob"), title="Plans")
    assert store.members(cid) == ("alice", "bob")
    assert store.is_member(cid, "bob") and not store.is_member(cid, "carol")
    snap = store.snapshot(cid, "bob")
    assert snap is not None
    assert (snap.title, snap.members, snap.last_seq, snap.created_by, snap.read_seq) == (
        "Plans",
        ("alice", "bob"),
        1,
        "alice",
        0,
    )
    assert store.snapshot(new_id(), "bob") is None
    convs, head = store.conversations_of("bob")
    assert [c.id for c in convs] == [cid] and head == store.head == 1
    assert store.conversations_of("carol") == ([], 1)
    assert store.shared_users("alice") == ["alice", "bob"]
    assert store.all_conversations() == [
        {
            "id": cid,
            "title": "Plans",
            "members": ["alice", "bob"],
            "last_seq": 1,
            "created_by": "alice",
        }
    ]


def test_a_creation_replays_and_a_taken_id_conflicts(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))
    with store.write() as tx:
        assert writes.create_conversation(tx, "alice", cid, "t", ("alice",))[0] is False
    with pytest.raises(errors.Conflict), store.write() as tx:
        writes.create_conversation(tx, "alice", cid, "other title", ("alice",))
    assert store.head == 1


def test_membership_spans_decide_what_a_user_sees(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))
    send(store, "alice", cid, "before bob")
    with store.write() as tx:
        writes.set_member(tx, "alice", cid, "bob", present=True)
    send(store, "alice", cid, "with bob")
    with store.write() as tx:
        writes.set_member(tx, "alice", cid, "bob", present=False)
    send(store, "alice", cid, "after bob")
    seen, nxt, more = store.pull("bob", 0, 100)
    kinds = [orjson.loads(e)["type"] for e in seen]
    bodies = [orjson.loads(e).get("body") for e in seen]
    assert kinds == ["conversation_updated", "message_received", "conversation_updated"]
    assert "with bob" in bodies and "before bob" not in bodies and "after bob" not in bodies
    assert (nxt, more) == (store.head, False)
    assert len(store.pull("alice", 0, 100)[0]) == store.head


def test_the_member_cap_holds_for_every_writer(store: ServerStorage) -> None:
    members = tuple(sorted({"alice", *(f"u{i}" for i in range(MAX_MEMBERS - 1))}))
    cid = create(store, "alice", members)
    with pytest.raises(errors.TooLarge), store.write() as tx:
        writes.set_member(tx, "alice", cid, "newcomer", present=True)
    with store.write() as tx:  # re-adding a member is not refused
        writes.set_member(tx, "alice", cid, "u1", present=True)
    assert len(store.members(cid)) == MAX_MEMBERS


# --- the event log ------------------------------------------------------------------------


def test_positions_are_global_and_seqs_dense_per_conversation(store: ServerStorage) -> None:
    a = create(store, "alice", ("alice",))
    b = create(store, "alice", ("alice",))
    results = [send(store, "alice", cid) for cid in (a, b, a, a)]
    assert [r.pos for r in results] == [3, 4, 5, 6]
    assert [r.seq for r in results] == [2, 2, 3, 4]
    events = store.all_events()
    assert [e["pos"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert store.all_events(since=5) == events[5:]


def test_pages_follow_the_cursor(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))
    for i in range(5):
        send(store, "alice", cid, f"m{i}")
    page, nxt, more = store.pull("alice", 0, 2)
    assert [orjson.loads(e)["pos"] for e in page] == [1, 2] and (nxt, more) == (2, True)
    page, nxt, more = store.pull("alice", nxt, 10)
    assert [orjson.loads(e)["pos"] for e in page] == [3, 4, 5, 6] and (nxt, more) == (6, False)
    assert store.pull("alice", 6, 10) == ([], 6, False)


def test_retention_expires_old_cursors(backend: Backend) -> None:
    store = backend.open(retention=3)
    cid = create(store, "alice", ("alice",))
    for _ in range(5):
        send(store, "alice", cid)
    assert (store.head, store.oldest_pos) == (6, 4)
    assert [e["pos"] for e in store.all_events()] == [4, 5, 6]
    store.pull("alice", 3, 10)
    with pytest.raises(errors.CursorExpired) as exc:
        store.pull("alice", 2, 10)
    assert exc.value.extra == {"oldest_pos": 4}
    with pytest.raises(errors.CursorExpired):
        store.pull("alice", 7, 10)


def test_the_log_survives_a_reopen(backend: Backend) -> None:
    store = backend.open(retention=2)
    cid = create(store, "alice", ("alice",))
    for _ in range(3):
        send(store, "alice", cid)
    head, oldest = store.head, store.oldest_pos
    store.close()
    again = backend.open(retention=2)
    assert (again.head, again.oldest_pos) == (head, oldest)
    assert send(again, "alice", cid).pos == head + 1


def test_a_failed_write_keeps_nothing(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))
    with pytest.raises(RuntimeError), store.write() as tx:
        writes.apply_op(
            tx, "alice", "d", {"op_id": "o1", "kind": "send", "conversation_id": cid, "body": "x"}
        )
        raise RuntimeError("crash before commit")
    assert store.head == 1
    assert store.op_result("alice", "d", "o1") is None
    assert send(store, "alice", cid).pos == 2


def test_a_savepoint_undoes_its_events(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))

    def event(pos: int, seq: int, ts: int) -> MessageReceived:
        return MessageReceived(
            pos=pos,
            conversation_id=cid,
            seq=seq,
            ts_ms=ts,
            message_id="m",
            op_id=None,
            sender="alice",
            body="x",
        )

    with store.write() as tx:
        with pytest.raises(errors.Invalid), tx.savepoint():
            tx.append(cid, event, ("alice",))
            raise errors.Invalid("refused")
        assert (tx.head, tx.committed) == (1, [])
        kept = tx.append(cid, event, ("alice",))
    assert (kept.pos, kept.seq, store.head) == (2, 2, 2)


# --- messages and operation records -------------------------------------------------------


def test_messages_rows_and_history(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice", "bob"))
    results = [send(store, "alice", cid, f"m{i}", device="phone") for i in range(5)]
    with store.write() as tx:
        row = tx.message(str(results[0].message_id))
        assert isinstance(row, MessageRow)
        assert (row.body, row.device, row.deleted) == ("m0", "phone", False)
        tx.edit_message(row.message_id, "edited", 99)
        tx.delete_message(str(results[1].message_id))
    page, end = store.history(cid, None, 2)
    assert [m.body for m in page] == ["m3", "m4"] and not end
    page, end = store.history(cid, page[0].seq, 10)
    assert [(m.body, m.edited_ms, m.deleted) for m in page] == [
        ("edited", 99, False),
        ("", None, True),
        ("m2", None, False),
    ]
    assert end
    truth = store.all_messages(cid)
    assert [m["seq"] for m in truth] == [2, 3, 4, 5, 6]
    assert list(truth[0]) == [
        "message_id",
        "conversation_id",
        "seq",
        "op_id",
        "sender",
        "body",
        "ts_ms",
        "edited_ms",
        "deleted",
        "device",
    ]


def test_operation_records_replay(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))
    op = {"op_id": "o1", "kind": "send", "conversation_id": cid, "body": "hi"}
    with store.write() as tx:
        first = writes.apply_op(tx, "alice", "d", op)
        record = tx.op_record("alice", "d", "o1")
        assert isinstance(record, OpRecord) and record.kind == "send"
        assert record.result == first
    with store.write() as tx:
        again = writes.apply_op(tx, "alice", "d", op)
        other = writes.apply_op(tx, "alice", "d", {**op, "body": "changed"})
    assert again.status == "duplicate" and again.pos == first.pos
    assert (other.status, other.code) == ("rejected", "op_id_conflict")
    assert store.op_result("alice", "d", "o1") == {
        "op_id": "o1",
        "status": "applied",
        "conversation_id": cid,
        "message_id": first.message_id,
        "seq": 2,
        "pos": 2,
        "ts_ms": first.ts_ms,
    }
    # An op id names one operation of one user whatever the device (issue 12).
    assert store.op_result("alice", "other-device", "o1") == store.op_result("alice", "d", "o1")


def test_op_ids_are_deduplicated_per_user_whatever_the_device(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice", "bob"))
    op = {"op_id": "o1", "kind": "send", "conversation_id": cid, "body": "hi"}
    with store.write() as tx:
        first = writes.apply_op(tx, "alice", "laptop", op)
        again = writes.apply_op(tx, "alice", "phone", op)
        other = writes.apply_op(tx, "alice", "phone", {**op, "body": "from the phone"})
        bobs = writes.apply_op(tx, "bob", "phone", {**op, "body": "bob's own"})
    assert first.status == "applied" and bobs.status == "applied"
    assert (again.status, again.message_id) == ("duplicate", first.message_id)
    assert (other.status, other.code, other.status_code) == ("rejected", "op_id_conflict", 409)
    assert [(m["sender"], m["body"]) for m in store.all_messages(cid)] == [
        ("alice", "hi"),
        ("bob", "bob's own"),
    ]


def test_a_rejection_is_recorded_without_its_effect(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))
    with store.write() as tx:
        result = writes.apply_op(
            tx, "bob", "d", {"op_id": "o2", "kind": "send", "conversation_id": cid, "body": "x"}
        )
    assert (result.status, result.code, result.status_code) == ("rejected", "not_found", 404)
    assert store.head == 1
    assert store.op_result("bob", "d", "o2") == {
        "op_id": "o2",
        "status": "rejected",
        "code": "not_found",
        "reason": "no such conversation",
        "status_code": 404,
    }


def test_row_types_are_plain_values(store: ServerStorage) -> None:
    cid = create(store, "alice", ("alice",))
    tx: WriteTx
    with store.write() as tx:
        row = tx.conversation(cid)
        assert isinstance(row, ConversationRow)
        assert (row.title, row.created_by, row.created_pos, row.last_seq) == ("t", "alice", 1, 1)
        assert tx.read_seq(cid, "alice") == 0
        tx.set_read_seq(cid, "alice", 1)
        assert tx.read_seq(cid, "alice") == 1
    snap = store.snapshot(cid, "alice")
    assert snap is not None and snap.read_seq == 1
