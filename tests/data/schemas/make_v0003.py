"""Make tests/data/schemas/v0003.db: a database of schema 0003_replies with a little of
everything in it (server messages, a reply, an edit, a delete, read receipts, a pending, a failed and
a sent operation, a conversation pending creation, presence, a quarantined event).

Run it once, from the repository root, with the code of that schema (it refuses to overwrite):

    .venv/bin/python tests/data/schemas/make_v0003.py

Never regenerate a released golden file: it stands for the databases users already have.
When a migration is added, copy this script to make_v000N.py, add rows for the new tables or
columns, and commit the new vNNNN.db beside the old ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from syncengine.events import (
    ConversationUpdated,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
)
from syncengine.store import Store
from syncengine.wire import OpResult

T = 1_764_100_000.0
MS = int(T * 1000)
C = "c-golden"


def main() -> None:
    path = Path(__file__).with_name("v0003.db")
    if path.exists():
        sys.exit(f"{path} exists: golden files are never regenerated")
    s = Store(path, clock=lambda: T)
    s.set_account(server="http://127.0.0.1:8765", user="alice", device="laptop")
    s.apply_events(
        [
            ConversationUpdated(
                pos=1,
                conversation_id=C,
                seq=1,
                ts_ms=MS + 1000,
                title="Golden",
                members=("alice", "bob"),
                actor="alice",
            )
        ]
    )
    s.enqueue("send", C, {"body": "hi bob"}, op_id="op-golden-1")
    s.apply_events(
        [
            MessageReceived(
                pos=2,
                conversation_id=C,
                seq=2,
                ts_ms=MS + 2000,
                message_id="m-2",
                sender="bob",
                body="hello",
            ),
            MessageReceived(
                pos=3,
                conversation_id=C,
                seq=3,
                ts_ms=MS + 3000,
                message_id="m-3",
                op_id="op-golden-1",
                sender="alice",
                body="hi bob",
            ),
            MessageUpdated(
                pos=4,
                conversation_id=C,
                seq=4,
                ts_ms=MS + 4000,
                message_id="m-2",
                body="hello, edited",
                editor="bob",
            ),
            MessageReceived(
                pos=5,
                conversation_id=C,
                seq=5,
                ts_ms=MS + 5000,
                message_id="m-5",
                sender="bob",
                body="to be deleted",
            ),
            MessageDeleted(
                pos=6,
                conversation_id=C,
                seq=6,
                ts_ms=MS + 6000,
                message_id="m-5",
                deleted_by="bob",
            ),
            MessageReceived(
                pos=9,
                conversation_id=C,
                seq=9,
                ts_ms=MS + 6500,
                message_id="m-9",
                sender="bob",
                body="a reply",
                reply_to="m-3",
            ),
            ReadReceipt(pos=7, conversation_id=C, seq=7, ts_ms=MS + 7000, user="bob", read_seq=5),
            ReadReceipt(pos=8, conversation_id=C, seq=8, ts_ms=MS + 8000, user="alice", read_seq=2),
        ],
        cursor=9,
        synced=True,
    )
    s.mark_sent(
        OpResult(
            op_id="op-golden-1",
            status="applied",
            conversation_id=C,
            message_id="m-3",
            seq=3,
            pos=3,
            ts_ms=MS + 3000,
        )
    )
    s.enqueue("send", C, {"body": "still pending"}, op_id="op-golden-2")
    reply = {"body": "pending reply", "reply_to_op_id": "op-golden-2"}
    s.enqueue("send", C, reply, op_id="op-golden-5")
    s.enqueue("send", C, {"body": "refused"}, op_id="op-golden-3")
    s.claim()
    s.mark_failed("op-golden-3", "too_large", "over the limit")
    s.recover_sending()
    s.enqueue(
        "create_conversation",
        "c-pending",
        {"title": "Pending", "members": ["carol"]},
        op_id="op-golden-4",
    )
    s.apply_presence("bob", "away", ts_ms=MS + 9000, last_seen_ms=MS + 500)
    s.quarantine('{"type": "message_received", "pos": 7}', "poison", pos=7)
    s.set_history_complete(C)
    s.checkpoint()
    s.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
