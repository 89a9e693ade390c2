"""The seams of issue 12 that need no socket: which live failures mean polling, the mode,
the health copied into the store, and the store's one-writer claim."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncengine.client.health import HealthNotes, error_doc, health_meta, sync_mode
from syncengine.client.live_try import is_live_fallback
from syncengine.core.sync import SyncProtocol
from syncengine.errors import (
    AuthFailed,
    ServerUnavailable,
    StoreLockHeld,
    TLSVerificationFailed,
    WireError,
)
from syncengine.local.lock import EngineClaim, StoreLock, daemon_info, held_here
from syncengine.models import ConnectionState as CS
from syncengine.paths import lock_path, token_path
from syncengine.store import Store
from syncengine.transport.base import LiveUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        LiveUnavailable("live channel refused: HTTP 404"),
        ServerUnavailable("live channel handshake: HTTP 502"),
        TimeoutError(),
        WireError("expected a ready frame with head", field="ready"),
        ConnectionResetError(),
    ],
)
def test_what_a_middlebox_does_to_the_live_channel_means_polling(exc: BaseException) -> None:
    assert is_live_fallback(exc)


@pytest.mark.parametrize(
    "exc", [AuthFailed("refused"), TLSVerificationFailed("bad certificate"), ValueError("bug")]
)
def test_a_refused_token_or_certificate_is_not_hidden_behind_polling(exc: BaseException) -> None:
    assert not is_live_fallback(exc)


def test_the_mode_follows_the_link_and_the_state() -> None:
    assert sync_mode(CS.LIVE, link=True) == "live"
    assert sync_mode(CS.LIVE, link=False) == "polling"
    assert sync_mode(CS.SYNCING, link=False) == "polling"
    for state in (CS.OFFLINE, CS.CONNECTING, CS.BACKOFF, CS.FAILED):
        assert sync_mode(state, link=False) == "offline"
    # Syncing towards a server that has not answered yet is not polling.
    assert sync_mode(CS.SYNCING, link=False, reached=False) == "offline"


def test_the_server_is_reached_again_in_each_session() -> None:
    core = SyncProtocol()
    assert not core.server_reached
    core.server_answered()
    assert core.server_reached
    core.connection_lost()
    assert not core.server_reached


def test_an_error_says_its_kind_message_and_time() -> None:
    doc = error_doc(ServerUnavailable("cannot reach x"), at=12.5)
    assert doc == {"kind": "server_unavailable", "message": "cannot reach x", "at": 12.5}
    assert error_doc(TimeoutError(), kind="live_pending", at=1.0)["message"] == "TimeoutError"


def test_the_health_copy_for_other_processes() -> None:
    core = SyncProtocol()
    notes = HealthNotes()
    assert health_meta(core, notes, "live") == {
        "mode": "live",
        "open_gaps": "0",
        "server_head": None,
        "last_error": None,
        "next_retry_at": None,
    }
    core.receive_ready(9)
    core.gaps.add("c1")
    notes.failed(error_doc(ServerUnavailable("down"), at=100.0), 2.5)
    meta = health_meta(core, notes, "offline")
    assert (meta["open_gaps"], meta["server_head"], meta["next_retry_at"]) == ("1", "9", "102.5")
    notes.recovered()
    assert (notes.last_error, notes.next_retry_at) == (None, None)


def test_status_reads_the_copy(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db") as store:
        store.set_state(
            CS.LIVE, mode="live", open_gaps="1", server_head="7", last_error=None, next_retry_at=None
        )
        health = store.health()
    assert (health.gaps, health.lag, health.mode, health.last_error) == (1, 7, "live", None)


def test_the_lock_and_token_sit_beside_the_real_path(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    link = tmp_path / "elsewhere.db"
    os.symlink(db, link)
    assert lock_path(link) == lock_path(db) == Path(f"{db}.lock")
    assert token_path(link) == Path(f"{db}.token")
    with StoreLock(db):
        assert held_here(link)
        with pytest.raises(StoreLockHeld):
            StoreLock(link).acquire(timeout=0)
    assert not held_here(db)


def test_a_syncing_engine_claims_the_store_once(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    first, second = EngineClaim(db), EngineClaim(tmp_path / "." / "a.db")
    first.take()
    assert daemon_info(db)[0]  # the engine took the lock: other processes see a writer
    with pytest.raises(StoreLockHeld):
        second.take()  # a second syncing engine in this process
    first.release()
    assert not daemon_info(db)[0]
    with StoreLock(db):  # the daemon's lock: its own engine works under it
        second.take()
        assert second.claimed
        second.release()
        assert held_here(db)  # the daemon still holds its lock
