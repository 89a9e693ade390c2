"""Issue 12, case 6: health that tells the truth, in ``SyncEngine.health()`` and in
``syncengine status --json``.

New keys, existing keys unchanged: ``lag`` (stream positions the store is behind what the
engine knows of the server), ``gaps`` (open seq gaps), ``last_error`` (``{kind, message, at}``
or null), ``next_retry_at`` (when the next attempt is due, or null), ``mode`` (``live``,
``polling`` or ``offline``).

- a live, caught-up engine: lag 0, gaps 0, no error, no retry due, mode ``live``;
- the server goes away: BACKOFF says why (``last_error``) and when it tries again
  (``next_retry_at``), mode ``offline``; back to ``live`` when the server returns;
- a live event is lost (a middlebox drops its frame) while pulls fail: the gap is counted in
  ``health()`` and in ``status`` (today ``status`` always shows 0: nothing writes it), and the
  lag is positive; both return to 0 once pulls work;
- the daemon: ``status --json`` carries the same keys, live and in BACKOFF.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from syncengine import ConnectionState, SyncHealth
from syncengine.server.testing import run_server
from tests.scenarios.conftest import (
    SCN_CONVERGE_S,
    ScnClient,
    ScnDaemon,
    ScnEngineFactory,
    ScnMiddlebox,
    scn_cli_login,
    scn_field,
    scn_status,
    scn_store_view,
    scn_until,
)

pytestmark = [pytest.mark.integration]

NEW_KEYS = {"lag", "gaps", "last_error", "next_retry_at", "mode"}
OLD_HEALTH_FIELDS = {
    "state",
    "pending",
    "sending",
    "failed",
    "oldest_pending_age_s",
    "cursor",
    "last_sync_at",
    "open_gaps",
    "conversations",
    "messages",
}
OLD_STATUS_KEYS = {
    "state",
    "server",
    "user",
    "cursor",
    "last_sync_at",
    "outbox",
    "oldest_pending_age_s",
    "conversations",
    "messages",
    "daemon",
}


def health_keys(health: SyncHealth) -> set[str]:
    return {f.name for f in attrs.fields(type(health))}


def as_epoch(value: Any) -> float:
    """A time given as epoch seconds (like ``last_sync_at``) or as an ISO 8601 string."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    return float(value)


def check_error(error: Any, since: float) -> None:
    """``last_error`` is ``{kind, message, at}``: two non-empty strings and a recent time."""
    assert error is not None, "no last_error while backing off"
    kind, message, at = (scn_field(error, k) for k in ("kind", "message", "at"))
    assert isinstance(kind, str) and kind, error
    assert isinstance(message, str) and message, error
    assert since - 1 <= as_epoch(at) <= time.time() + 1, error


@pytest.mark.timeout(30)
async def test_health_of_a_live_engine(server: Any, scn_engines: ScnEngineFactory) -> None:
    async with ScnClient(server.url, "alice") as alice:
        cid = await alice.create("Health", ["bob"])
        bob = await scn_engines(server.url, "bob")
        await alice.send(cid, "hello")
        await scn_until(lambda: bob.store.message_count(cid) == 1, SCN_CONVERGE_S, "bob has it")
        health = await bob.health()
        assert OLD_HEALTH_FIELDS <= health_keys(health), "an existing key went away"
        assert NEW_KEYS <= health_keys(health), f"missing: {sorted(NEW_KEYS - health_keys(health))}"
        await scn_until(
            lambda: bob.store.cursor() == server.state.head, SCN_CONVERGE_S, "bob caught up"
        )
        health = await bob.health()
        assert (health.lag, health.gaps, health.last_error, health.next_retry_at, health.mode) == (
            0,
            0,
            None,
            None,
            "live",
        )


@pytest.mark.timeout(60)
async def test_health_in_backoff_says_why_and_when(
    tmp_path: Path, scn_engines: ScnEngineFactory
) -> None:
    async with run_server(tmp_path / "srv") as srv:
        bob = await scn_engines(srv.url, "bob")
        stopped_at = time.time()
        await srv.stop()
        await scn_until(
            lambda: bob.state is ConnectionState.BACKOFF, SCN_CONVERGE_S, "bob backs off"
        )
        health = await bob.health()
        assert health.state is ConnectionState.BACKOFF
        assert scn_field(health, "mode") == "offline"
        error = scn_field(health, "last_error")
        check_error(error, stopped_at)
        retry_at = scn_field(health, "next_retry_at")
        assert retry_at is not None, "no next_retry_at while backing off"
        assert as_epoch(retry_at) >= as_epoch(scn_field(error, "at")), (retry_at, error)

        await srv.start()
        assert await bob.wait_for_state(ConnectionState.LIVE, SCN_CONVERGE_S)
        health = await bob.health()
        assert (health.mode, health.next_retry_at) == ("live", None)


async def open_a_gap(
    server: Any, box: ScnMiddlebox, alice: ScnClient, scn_engines: ScnEngineFactory
) -> tuple[Any, str]:
    """bob live through ``box``; a live event lost on the way while pulls fail: one open gap."""
    cid = await alice.create("Gap", ["bob"])
    bob = await scn_engines(box.url, "bob")
    await alice.send(cid, "before")
    await scn_until(lambda: bob.store.message_count(cid) == 1, SCN_CONVERGE_S, "bob is live")

    box.drop_frames = [b"lost on the live channel"]
    box.rest_fail = ["/v1/events"]  # the pull that would fill the gap fails
    await alice.send(cid, "lost on the live channel")
    await alice.send(cid, "after the gap")
    await scn_until(
        lambda: "after the gap" in [r[3] for r in scn_store_view(bob, cid)],
        SCN_CONVERGE_S,
        "the message after the gap arrives live",
    )
    assert box.dropped == 1
    assert bob.state is ConnectionState.LIVE
    return bob, cid


async def fill_the_gap(box: ScnMiddlebox, bob: Any, cid: str) -> None:
    box.heal()
    await scn_until(
        lambda: "lost on the live channel" in [r[3] for r in scn_store_view(bob, cid)],
        SCN_CONVERGE_S,
        "the gap is filled once pulls work",
    )


@pytest.mark.timeout(60)
async def test_engine_open_gaps_counts_a_gap_pulls_cannot_fill(
    server: Any, scn_engines: ScnEngineFactory
) -> None:
    """Holds today (the existing ``open_gaps`` of ``SyncEngine.health()``): kept as a pin."""
    async with ScnMiddlebox(server.port) as box, ScnClient(server.url, "alice") as alice:
        bob, cid = await open_a_gap(server, box, alice, scn_engines)
        assert (await bob.health()).open_gaps == 1
        await fill_the_gap(box, bob, cid)
        await scn_until(
            lambda: bob.store.cursor() == server.state.head, SCN_CONVERGE_S, "bob caught up"
        )
        assert (await bob.health()).open_gaps == 0


@pytest.mark.timeout(60)
async def test_open_gap_is_counted_in_health_and_status(
    server: Any, scn_engines: ScnEngineFactory
) -> None:
    async with ScnMiddlebox(server.port) as box, ScnClient(server.url, "alice") as alice:
        bob, cid = await open_a_gap(server, box, alice, scn_engines)
        health = await bob.health()
        status = await scn_status(bob.db_path)
        problems = []  # every difference at once
        for where, doc, key, ok in (
            ("health()", health, "gaps", lambda v: v == 1),
            ("health()", health, "lag", lambda v: isinstance(v, int) and v >= 1),
            ("status", status, "gaps", lambda v: v == 1),
            ("status", status, "lag", lambda v: isinstance(v, int) and v >= 1),
        ):
            try:
                value = scn_field(doc, key)
            except AssertionError:
                problems.append(f"{where} has no {key!r}")
                continue
            if not ok(value):
                problems.append(f"{where} {key} = {value!r} with one gap open")
        assert not problems, problems

        await fill_the_gap(box, bob, cid)
        await scn_until(
            lambda: bob.store.cursor() == server.state.head, SCN_CONVERGE_S, "bob caught up"
        )
        health = await bob.health()
        assert (scn_field(health, "gaps"), scn_field(health, "lag")) == (0, 0), health
        status = await scn_status(bob.db_path)
        assert (scn_field(status, "gaps"), scn_field(status, "lag")) == (0, 0), status


@pytest.mark.timeout(90)
async def test_status_json_of_the_daemon_has_the_health_keys(
    tmp_path: Path, scn_daemons: Any
) -> None:
    db = tmp_path / "alice.db"
    async with run_server(tmp_path / "srv") as srv:
        await scn_cli_login(db, srv.url, "alice")
        daemon: ScnDaemon = await scn_daemons(db)
        await daemon.wait_live()
        status = await scn_status(db)
        assert OLD_STATUS_KEYS <= set(status), "an existing key went away"
        assert NEW_KEYS <= set(status), f"missing: {sorted(NEW_KEYS - set(status))}"
        assert {k: status[k] for k in sorted(NEW_KEYS)} == {
            "gaps": 0,
            "lag": 0,
            "last_error": None,
            "mode": "live",
            "next_retry_at": None,
        }

        stopped_at = time.time()
        await srv.stop()

        async def backing_off() -> bool:
            return (await scn_status(db))["state"] == "backoff"

        await scn_until(backing_off, SCN_CONVERGE_S, "the daemon backs off")
        status = await scn_status(db)
        assert status["mode"] == "offline", status
        check_error(status["last_error"], stopped_at)
        assert status["next_retry_at"] is not None, status
        assert as_epoch(status["next_retry_at"]) >= as_epoch(status["last_error"]["at"]), status
        await srv.start()
        await daemon.wait_live()
        assert (await scn_status(db))["mode"] == "live"
