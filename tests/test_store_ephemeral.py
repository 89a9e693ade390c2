"""The one upsert of typing and presence shared by the live path and the snapshot path."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from syncengine.errors import UsageError
from syncengine.events import ServerEvent, TypingStarted, TypingStopped, UserPresenceChanged
from syncengine.store import Store
from tests.helpers_store import ME, open_store

CID = "conv-a"

# --- typing and presence: the live path and the snapshot path agree -----------------------------


def _ephemeral_story() -> list[ServerEvent]:
    return [
        TypingStarted(conversation_id=CID, user="bob", ts_ms=2_000, ttl_ms=8_000),
        TypingStarted(conversation_id=CID, user="carol", ts_ms=2_100, ttl_ms=2_000),
        TypingStopped(conversation_id=CID, user="bob", ts_ms=1_500),  # older: ignored
        TypingStarted(conversation_id=CID, user="dave", ts_ms=2_200, ttl_ms=8_000),
        TypingStopped(conversation_id=CID, user="dave", ts_ms=2_500),
        TypingStarted(conversation_id=CID, user="dave", ts_ms=2_400, ttl_ms=8_000),  # older
        TypingStarted(conversation_id=CID, user=ME, ts_ms=2_000, ttl_ms=8_000),  # own
        UserPresenceChanged(user="bob", status="online", ts_ms=2_000),
        UserPresenceChanged(user="bob", status="offline", ts_ms=1_000, last_seen_ms=900),
        UserPresenceChanged(user="carol", status="offline", ts_ms=3_000, last_seen_ms=2_900),
        UserPresenceChanged(user="carol", status="away", ts_ms=4_000),
        UserPresenceChanged(user="erin", status="invisible", ts_ms=5_000),  # unknown: refused
    ]


def _snapshot_path(store: Store, events: list[ServerEvent]) -> None:
    """The same facts through ``apply_typing`` / ``apply_presence`` (the snapshot path)."""
    for ev in events:
        if isinstance(ev, TypingStarted):
            store.apply_typing(
                ev.conversation_id, ev.user, typing=True, ts_ms=ev.ts_ms, ttl_s=ev.ttl_ms / 1000
            )
        elif isinstance(ev, TypingStopped):
            store.apply_typing(ev.conversation_id, ev.user, typing=False, ts_ms=ev.ts_ms)
        elif isinstance(ev, UserPresenceChanged):
            try:
                store.apply_presence(
                    ev.user, ev.status, ts_ms=ev.ts_ms, last_seen_ms=ev.last_seen_ms
                )
            except UsageError:
                pass  # the live path drops it too


def _visible(store: Store) -> tuple[Any, ...]:
    conn = sqlite3.connect(store.path)
    try:
        others_typing = conn.execute(
            "SELECT conversation_id, user, expires_at, ts_ms FROM typing WHERE user != ? "
            "ORDER BY conversation_id, user",
            (ME,),
        ).fetchall()
        presence = conn.execute("SELECT * FROM presence ORDER BY user").fetchall()
    finally:
        conn.close()
    return store.typing(CID), store.all_presence(), others_typing, presence


def test_live_and_snapshot_paths_store_the_same_typing_and_presence(tmp_path: Path) -> None:
    events = _ephemeral_story()
    with open_store(tmp_path / "live.db") as live, open_store(tmp_path / "snap.db") as snap:
        kept = live.apply_ephemeral(events)
        _snapshot_path(snap, events)
        assert _visible(live) == _visible(snap)
        assert [t.user for t in live.typing(CID)] == ["bob", "carol"]  # dave stopped
        assert {p.user: p.status.value for p in live.all_presence()} == {
            "bob": "online",
            "carol": "away",
        }
    assert len(kept) == len(events) - 1  # only the unknown presence status was refused
