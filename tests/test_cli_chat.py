"""The chat commands of issue 18 (``edit``, ``delete``, ``read``) and unknown members (issue 14).

Against a real reference server on 127.0.0.1 that refuses members without an account, as a
production server does (``refuse_unknown_members``): every user logs in before being added.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread
from syncengine.store import Store
from tests.test_cli import assert_user_error, invoke, login, new_conversation, one_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("server"),
        **{**TEST_DEFAULTS, "refuse_unknown_members": True},
    )
    with ServerThread(config) as server:
        yield server


@pytest.fixture
def alice(tmp_path: Path, srv: ServerThread) -> Path:
    db = tmp_path / "alice.db"
    login(db, srv.url, "alice")
    return db


@pytest.fixture
def bob(tmp_path: Path, srv: ServerThread) -> Path:
    db = tmp_path / "bob.db"
    login(db, srv.url, "bob")
    return db


def cli_json(db: Path, *args: str) -> object:
    """Run one command with ``--json`` on ``db``; its single JSON document."""
    return one_json(invoke("--db", str(db), "--json", *args))


def by_body(db: Path, cid: str) -> dict[str, dict[str, object]]:
    """The messages of a conversation, keyed by body."""
    docs = cli_json(db, "messages", cid)
    assert isinstance(docs, list)
    return {str(m["body"]): m for m in docs}


def test_an_unknown_member_fails_the_creation_with_its_reason(alice: Path) -> None:
    cid = new_conversation(alice, "nosuchuser", title="Typo")
    cli_json(alice, "sync")
    failed = cli_json(alice, "outbox", "--state", "failed")
    assert isinstance(failed, list)
    assert [(i["kind"], i["conversation_id"]) for i in failed] == [("create_conversation", cid)]
    assert str(failed[0]["last_error"]).startswith("unknown_user: no such user: nosuchuser")
    status = cli_json(alice, "status")
    assert isinstance(status, dict) and status["outbox"]["failed"] == 1


def test_edit_delete_and_read_from_the_cli_reach_the_other_store(alice: Path, bob: Path) -> None:
    cid = new_conversation(alice, "bob", title="Chat")
    # Offline: all of these are queued before anything reaches the server; a message not yet
    # acknowledged is named by the op id of its send.
    keep = str(cli_json(alice, "send", cid, "typo hre")["op_id"])  # type: ignore[index]
    gone = str(cli_json(alice, "send", cid, "oops")["op_id"])  # type: ignore[index]
    assert set(cli_json(alice, "edit", keep, "typo here")) == {"op_id"}  # type: ignore[arg-type]
    cli_json(alice, "delete", gone)
    local = by_body(alice, cid)
    assert local["typo here"]["state"] == "pending" and local[""]["op_id"] == gone
    cli_json(alice, "sync")
    assert cli_json(alice, "outbox", "--state", "failed") == []

    cli_json(bob, "sync")
    seen = by_body(bob, cid)
    assert set(seen) == {"typo here", ""}
    assert seen["typo here"]["edited"] is True and seen["typo here"]["deleted"] is False
    assert seen[""]["deleted"] is True
    # Acknowledged now: named by the server id this time.
    server_id = str(seen["typo here"]["id"])
    cli_json(alice, "edit", server_id, "final")
    cli_json(alice, "sync")
    cli_json(bob, "sync")
    assert "final" in by_body(bob, cid)

    convs = cli_json(bob, "conversations")
    assert isinstance(convs, list) and convs[0]["unread"] == 1  # a deleted one is not unread
    read = cli_json(bob, "read", cid[:8])
    assert isinstance(read, dict)
    convs = cli_json(bob, "conversations")
    assert isinstance(convs, list) and convs[0]["unread"] == 0  # at once, offline
    cli_json(bob, "sync")
    with Store(bob) as store:
        item = store.outbox_item(str(read["op_id"]))
        assert item is not None and item.state.value == "sent"
    cli_json(alice, "sync")
    assert by_body(alice, cid)["final"]["read_by"] == ["bob"]  # her own message
    assert by_body(bob, cid)["final"]["read_by"] == []  # not his


def test_edit_mistakes_are_one_line(alice: Path) -> None:
    assert_user_error(invoke("--db", str(alice), "edit", "nosuchmessage", "x"), "no message")
    assert_user_error(invoke("--db", str(alice), "delete", "nosuchmessage"), "no message")
    cid = new_conversation(alice, title="Solo")
    op_id = str(cli_json(alice, "send", cid, "hi")["op_id"])  # type: ignore[index]
    assert_user_error(invoke("--db", str(alice), "edit", op_id, ""), "empty")


def test_cancel_a_queued_send_and_refuse_a_sent_one(alice: Path, srv: ServerThread) -> None:
    cid = new_conversation(alice, title="Cancel")
    kept = str(cli_json(alice, "send", cid, "kept")["op_id"])  # type: ignore[index]
    gone = str(cli_json(alice, "send", cid, "gone")["op_id"])  # type: ignore[index]
    assert cli_json(alice, "cancel", gone[:13]) == {"cancelled": gone, "kind": "send"}
    assert list(by_body(alice, cid)) == ["kept"]
    assert gone not in {i["op_id"] for i in cli_json(alice, "outbox")}  # type: ignore[union-attr]
    cli_json(alice, "sync")
    assert [m["body"] for m in srv.state.all_messages(cid)] == ["kept"]
    assert_user_error(invoke("--db", str(alice), "cancel", kept), "already sent")
    assert_user_error(invoke("--db", str(alice), "cancel", gone), "no operation")
    last = str(cli_json(alice, "send", cid, "x")["op_id"])  # type: ignore[index]
    human = invoke("--db", str(alice), "cancel", last)
    assert human.exit_code == 0 and human.stdout.startswith("Cancelled send: ")


def test_members_add_and_remove_from_the_cli(
    alice: Path, bob: Path, srv: ServerThread, tmp_path: Path
) -> None:
    carol = tmp_path / "carol.db"
    login(carol, srv.url, "carol")
    cid = new_conversation(alice, "bob", title="Team")
    cli_json(alice, "sync")
    shown = cli_json(alice, "members", cid)
    assert shown == {"id": cid, "members": ["alice", "bob"], "queued": []}
    # Queued offline (nothing synced yet): the store shows members as the server has them.
    add = ("--add", "carol", "--add", "nobody", "--remove", "bob")
    doc = cli_json(alice, "members", cid[:30], *add)
    assert isinstance(doc, dict) and len(doc["queued"]) == 3
    assert doc["members"] == ["alice", "bob"]
    cli_json(alice, "sync")
    assert srv.state.members(cid) == ("alice", "carol")
    assert cli_json(alice, "members", cid)["members"] == ["alice", "carol"]  # type: ignore[index]
    failed = cli_json(alice, "outbox", "--state", "failed")
    assert isinstance(failed, list)
    assert [(i["kind"], str(i["last_error"]).split(":")[0]) for i in failed] == [
        ("add_member", "unknown_user")
    ]
    cli_json(carol, "sync")
    convs = cli_json(carol, "conversations")
    assert isinstance(convs, list) and cid in {c["id"] for c in convs}
    cli_json(bob, "sync")
    bobs = cli_json(bob, "conversations")
    assert isinstance(bobs, list) and cid not in {c["id"] for c in bobs}
    human = invoke("--db", str(alice), "members", cid)
    assert human.exit_code == 0 and human.stdout.strip() == "alice, carol"


def test_send_reply_to_shows_in_both_stores(alice: Path, bob: Path) -> None:
    cid = new_conversation(alice, "bob", title="Replies")
    first = str(cli_json(alice, "send", cid, "question")["op_id"])  # type: ignore[index]
    cli_json(alice, "send", cid, "answer", "--reply-to", first)  # pending: by op id
    assert by_body(alice, cid)["answer"]["reply_to"] == first
    cli_json(alice, "sync")
    cli_json(bob, "sync")
    server_id = by_body(bob, cid)["question"]["id"]
    assert by_body(bob, cid)["answer"]["reply_to"] == server_id
    assert by_body(alice, cid)["answer"]["reply_to"] == server_id
    assert by_body(bob, cid)["question"]["reply_to"] is None
    assert_user_error(
        invoke("--db", str(alice), "send", cid, "x", "--reply-to", "nosuchmessage"), "no message"
    )


def test_react_and_take_it_back(alice: Path, bob: Path) -> None:
    cid = new_conversation(alice, "bob", title="React")
    cli_json(alice, "send", cid, "ship it?")
    cli_json(alice, "sync")
    cli_json(bob, "sync")
    message_id = str(by_body(bob, cid)["ship it?"]["id"])
    assert by_body(bob, cid)["ship it?"]["reactions"] == {}
    assert set(cli_json(bob, "react", message_id, "+1")) == {"op_id"}  # type: ignore[arg-type]
    cli_json(bob, "react", message_id, "rocket")
    cli_json(bob, "react", message_id, "rocket", "--remove")
    assert by_body(bob, cid)["ship it?"]["reactions"] == {"+1": ["bob"]}
    cli_json(bob, "sync")
    cli_json(alice, "react", message_id, "+1")
    cli_json(alice, "sync")
    cli_json(bob, "sync")
    assert by_body(alice, cid)["ship it?"]["reactions"] == {"+1": ["alice", "bob"]}
    assert by_body(bob, cid)["ship it?"]["reactions"] == {"+1": ["alice", "bob"]}
    assert_user_error(invoke("--db", str(bob), "react", message_id, "a b"), "whitespace")
