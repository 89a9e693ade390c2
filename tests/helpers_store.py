"""Shared helpers for the store tests: a settable clock, event builders, and a snapshot of
everything an application can observe through the store's read API."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from syncengine.events import (
    ConversationUpdated,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
)
from syncengine.store import Store

ME = "me"
REPO = Path(__file__).resolve().parent.parent
T0 = 1_764_100_000.0  # a fixed "now" for tests, in seconds


class Clock:
    """A clock the test sets by hand (the store takes any ``() -> float``)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def open_store(path: Path, *, user: str = ME, clock: Clock | None = None, **kw: Any) -> Store:
    return Store(path, user=user, clock=clock or Clock(), **kw)


def subprocess_env() -> dict[str, str]:
    """Environment for a child Python that must import syncengine from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


PYTHON = sys.executable


# --- event builders: keyword-light, with defaults that keep examples short ----------------


def conv_updated(
    cid: str,
    seq: int,
    pos: int,
    members: Iterable[str] = (ME, "bob"),
    title: str = "",
    actor: str = "bob",
    ts_ms: int | None = None,
) -> ConversationUpdated:
    return ConversationUpdated(
        pos=pos,
        conversation_id=cid,
        seq=seq,
        ts_ms=ts_ms if ts_ms is not None else 1_000 * seq,
        title=title or f"title of {cid}",
        members=tuple(sorted(set(members))),
        actor=actor,
    )


def received(
    cid: str,
    seq: int,
    pos: int,
    *,
    mid: str | None = None,
    sender: str = "bob",
    body: str | None = None,
    op_id: str | None = None,
    ts_ms: int | None = None,
) -> MessageReceived:
    return MessageReceived(
        pos=pos,
        conversation_id=cid,
        seq=seq,
        ts_ms=ts_ms if ts_ms is not None else 1_000 * seq,
        message_id=mid or f"{cid}-m{seq}",
        op_id=op_id,
        sender=sender,
        body=body if body is not None else f"body {cid}/{seq}",
    )


def updated(
    cid: str, seq: int, pos: int, mid: str, body: str, editor: str = "bob"
) -> MessageUpdated:
    return MessageUpdated(
        pos=pos,
        conversation_id=cid,
        seq=seq,
        ts_ms=1_000 * seq,
        message_id=mid,
        body=body,
        editor=editor,
    )


def deleted(cid: str, seq: int, pos: int, mid: str, by: str = "bob") -> MessageDeleted:
    return MessageDeleted(
        pos=pos, conversation_id=cid, seq=seq, ts_ms=1_000 * seq, message_id=mid, deleted_by=by
    )


def receipt(cid: str, seq: int, pos: int, user: str, read_seq: int) -> ReadReceipt:
    return ReadReceipt(
        pos=pos, conversation_id=cid, seq=seq, ts_ms=1_000 * seq, user=user, read_seq=read_seq
    )


# --- observable state ---------------------------------------------------------------------


def snapshot(store: Store, conversation_ids: Iterable[str]) -> dict[str, Any]:
    """Everything the read API shows: conversations (order, titles, members, unread), every
    message of each conversation (all fields), the outbox states and the cursor."""
    return {
        "conversations": store.conversations(),
        "messages": {cid: store.messages(cid, limit=10_000) for cid in sorted(conversation_ids)},
        "outbox": [(i.op_id, i.state) for i in store.outbox()],
        "cursor": store.cursor(),
    }


def file_mode(path: Path | str) -> int:
    return os.stat(path).st_mode & 0o777
