"""Issue 13 hardening of the reference server, below the end-to-end scenarios
(``tests/scenarios/test_hardening_*.py``): pages bounded in bytes, per-address limits of
logins and registrations, the connection guard and the log's repeat filter.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from syncengine import MessageFailed, SyncEngine
from syncengine.models import new_id
from syncengine.protocol.errors import Rejection
from syncengine.server import service as service_module
from syncengine.server.app import create_app
from syncengine.server.config import ServerConfig
from syncengine.server.guard import (
    FD_RESERVE,
    ConnectionGuard,
    ConnectionLimits,
    connection_limits,
)
from syncengine.server.logfilter import RepeatFilter
from syncengine.server.service import ServerService
from syncengine.server.testing import login, run_server
from tests.conftest import FAST
from tests.conftest_server import live, make_config, open_api

#: 5,000 control characters: 30,000 bytes once escaped.
HEAVY = "\x01" * 5_000
BUDGET = 64 * 1024


# --- pages bounded in bytes ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["asgi", "uvicorn"])
async def test_pull_pages_stay_within_the_byte_budget_and_lose_nothing(
    tmp_path: Path, kind: str
) -> None:
    async with open_api(kind, tmp_path, page_bytes=BUDGET) as api:
        await api.login("alice")
        await api.login("bob")
        cid = await api.create("alice", ["bob"])
        for _ in range(12):
            await api.send("alice", cid, HEAVY)
        since, seen, pages = 0, [], 0
        while True:
            response = await api.client.get(
                "/v1/events", params={"since": since, "limit": 1000}, headers=api.auth("bob")
            )
            assert len(response.content) <= BUDGET + 64  # the page's own brackets and keys
            page = orjson.loads(response.content)
            heavy = [e for e in page["events"] if e["type"] == "message_received"]
            assert 1 <= len(heavy) <= 2  # 2 x 30 KB fit in 64 KiB, 3 do not
            seen += [e["pos"] for e in page["events"]]
            assert page["next"] == page["events"][-1]["pos"]
            since, pages = page["next"], pages + 1
            if not page["has_more"]:
                break
        assert seen == sorted(e["pos"] for e in api.state.all_events()) and pages == 6


async def test_one_event_over_the_budget_is_still_sent_alone(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, page_bytes=1024) as api:
        await api.login("alice")
        cid = await api.create("alice", [])
        await api.send("alice", cid, HEAVY)
        await api.send("alice", cid, HEAVY)
        first = await api.pull("alice", 0)
        assert len(first["events"]) == 1 and first["has_more"]
        events = await api.pull_all("alice")
        assert [e["type"] for e in events] == ["conversation_updated", *["message_received"] * 2]


async def test_history_pages_stay_within_the_byte_budget(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, page_bytes=BUDGET) as api:
        await api.login("alice")
        cid = await api.create("alice", [])
        for i in range(7):
            await api.send("alice", cid, f"{i}{HEAVY}")
        before: int | None = None
        seqs: list[int] = []
        while True:
            params: dict[str, Any] = {"limit": 200}
            if before is not None:
                params["before"] = before
            response = await api.client.get(
                f"/v1/conversations/{cid}/messages", params=params, headers=api.auth("alice")
            )
            assert response.status_code == 200 and len(response.content) <= BUDGET + 64
            page = orjson.loads(response.content)
            assert 1 <= len(page["messages"]) <= 2
            seqs = [m["seq"] for m in page["messages"]] + seqs
            if page["end_of_history"]:
                break
            before = page["messages"][0]["seq"]
        assert seqs == list(range(2, 9))  # seq 1 is the creation


def test_the_page_budget_is_checked() -> None:
    for bad in (0, 1023, 16 * 1024 * 1024 + 1):
        with pytest.raises(ValueError, match="page_bytes"):
            ServerConfig(data_dir="x", page_bytes=bad)
    assert ServerConfig(data_dir="x").page_bytes == 4 * 1024 * 1024


# --- logins and registrations per client address ------------------------------------------


def _service(tmp_path: Path, **overrides: Any) -> ServerService:
    return ServerService(make_config(tmp_path, **overrides))


async def _status(call: Awaitable[object]) -> int:
    try:
        await call
    except Rejection as exc:
        return exc.status
    return 200


async def test_wrong_passwords_never_lock_the_right_one_out(tmp_path: Path) -> None:
    core = _service(tmp_path, login_fail_burst=3, login_fail_ip_burst=5, open_registration=False)
    try:
        await core.set_password("bob", "right")
        assert await _status(core.login("bob", "right", "d", "10.0.0.1")) == 200
        hammer = [await _status(core.login("bob", f"wrong{i}", "d", "10.0.0.9")) for i in range(6)]
        assert hammer == [401, 401, 401, 429, 429, 429]  # per (address, name)
        assert await _status(core.login("bob", "right", "d", "10.0.0.1")) == 200
        # the attacker's address, any name (unknown ones too): 2 more failures, then its limit
        other = [await _status(core.login("carol", "x", "d", "10.0.0.9")) for _ in range(3)]
        assert other == [401, 401, 429]
    finally:
        core.close()


async def test_a_limited_attempt_costs_no_password_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = _service(tmp_path, login_fail_burst=1)
    try:
        await core.login("bob", "right", "d", "10.0.0.1")
        await _status(core.login("bob", "wrong", "d", "10.0.0.9"))
        hashed: list[str] = []
        real = service_module.rules.hash_password
        monkeypatch.setattr(
            service_module.rules,
            "hash_password",
            lambda *a: hashed.append("h") or real(*a),  # type: ignore[func-returns-value]
        )
        assert await _status(core.login("bob", "wrong", "d", "10.0.0.9")) == 429
        assert hashed == []
    finally:
        core.close()


async def test_registrations_are_limited_per_address(tmp_path: Path) -> None:
    core = _service(tmp_path, register_burst=3)
    try:
        first = [await _status(core.login(f"u{i}", "pw", "d", "10.0.0.5")) for i in range(5)]
        assert first == [200, 200, 200, 429, 429]
        assert await _status(core.login("v0", "pw", "d", "10.0.0.6")) == 200  # another address
        assert await _status(core.login("u0", "pw", "d", "10.0.0.5")) == 200  # not a new user
        assert core.storage.users() == ["u0", "u1", "u2", "v0"]
        # IPv6: one /64 is one client
        six = [await _status(core.login(f"w{i}", "pw", "d", f"2001:db8::{i}")) for i in range(4)]
        assert six == [200, 200, 200, 429]
    finally:
        core.close()


async def test_the_login_route_passes_the_client_address(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, register_burst=1))
    try:
        for host, expected in (("10.0.0.1", [200, 429]), ("10.0.0.2", [200, 429])):
            transport = httpx.ASGITransport(app=app, client=(host, 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                codes = []
                for i in range(2):
                    body = {"user": f"{host}-{i}".replace(".", "x"), "password": "p", "device": "d"}
                    response = await client.post("/v1/login", json=body)
                    codes.append(response.status_code)
                assert codes == expected, host
                assert response.headers["Retry-After"].isdigit()
    finally:
        app.state.core.close()


# --- the connection guard -----------------------------------------------------------------


def test_connection_caps_leave_descriptors_for_everything_else() -> None:
    small = connection_limits(256, None, 128)
    assert small.max_connections + 4 * small.accept_batch + FD_RESERVE <= 256
    assert small.per_address == 128 and small.per_address < small.max_connections
    assert connection_limits(256, 50, None).max_connections == 50  # a lower cap holds
    assert connection_limits(256, 10_000, None).max_connections == small.max_connections
    big = connection_limits(1 << 20, None, None)
    assert big.accept_batch == 2048 and big.max_connections > 900_000
    assert connection_limits(10, None, None).max_connections >= 8  # never nothing


class FakeConnection:
    def __init__(self, waiting: bool = True) -> None:
        self.waiting = waiting
        self.evicted = False

    def waiting_for_head(self) -> bool:
        return self.waiting and not self.evicted

    def evict(self) -> None:
        self.evicted = True


def test_the_guard_caps_connections_per_address_and_releases_them() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=10, per_address=2, accept_batch=8))
    a, b, c = object(), object(), object()
    assert guard.admit(a, "10.0.0.1") and guard.admit(b, "10.0.0.1")
    assert not guard.admit(c, "10.0.0.1")  # a third from that address
    assert guard.admit(c, "10.0.0.2")  # another address is not affected
    assert (guard.open_from("10.0.0.1"), guard.open_connections, guard.refused) == (2, 3, 1)
    guard.release(a)
    guard.release(a)  # idempotent
    assert guard.open_from("10.0.0.1") == 1 and guard.admit(object(), "10.0.0.1")
    # IPv6: one /64 is one client
    assert guard.admit(object(), "2001:db8::1") and guard.admit(object(), "2001:db8::2")
    assert not guard.admit(object(), "2001:db8::3")


def test_at_the_total_cap_the_longest_waiting_connection_makes_room() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=3, per_address=None, accept_batch=8))
    conns = [object() for _ in range(3)]
    fakes = [FakeConnection(), FakeConnection(), FakeConnection()]
    for conn, fake in zip(conns, fakes, strict=True):
        assert guard.admit(conn, f"10.0.0.{len(guard._open) + 1}")
        guard.waiting(conn, fake)
    fakes[0].waiting = False  # the oldest is busy with a request: it stays
    newcomer = object()
    assert guard.admit(newcomer, "10.0.0.9")
    assert [f.evicted for f in fakes] == [False, True, False] and guard.evicted == 1
    assert guard.open_connections == 3
    for fake in fakes:
        fake.waiting = False
    assert not guard.admit(object(), "10.0.0.10")  # nobody waits: refused
    assert guard.refused == 1


def test_refusals_are_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    guard = ConnectionGuard(
        ConnectionLimits(max_connections=1, per_address=None, accept_batch=8),
        clock=lambda: now[0],
    )
    guard.admit(object(), "10.0.0.1")
    with caplog.at_level(logging.WARNING, logger="syncengine.server"):
        for _ in range(500):
            guard.admit(object(), "10.0.0.2")
        now[0] = 11.0
        guard.admit(object(), "10.0.0.2")
    lines = [r.getMessage() for r in caplog.records if r.name == "syncengine.server"]
    assert len(lines) == 2 and guard.refused == 501
    assert lines[1].startswith("refused 500 connection(s)")


def test_the_repeat_filter_collapses_a_flood_of_one_error_and_counts_it() -> None:
    now = [0.0]
    repeat = RepeatFilter(interval_s=10, burst=3, clock=lambda: now[0])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(repeat)
    logger = logging.getLogger("syncengine.test.repeat")
    logger.addHandler(handler)
    logger.propagate = False

    def accept_failed(i: int) -> None:
        logger.error("accept failed: %d", i)  # one call site, varying text

    try:
        for i in range(1000):
            accept_failed(i)
        logger.error("another call site")
        now[0] = 10.0
        accept_failed(1000)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        "accept failed: 0",
        "accept failed: 1",
        "accept failed: 2",
        "another call site",
    ]
    assert lines[4] == "accept failed: 1000 [and 997 more like it in the previous 10 s, not logged]"
    assert len(lines) == 5 and repeat.dropped == 997


def test_a_record_seen_by_two_handlers_is_judged_once() -> None:
    repeat = RepeatFilter(interval_s=10, burst=1, clock=lambda: 0.0)
    record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "m", None, None)
    assert repeat.filter(record) and repeat.filter(record)  # the same record: the same verdict
    again = logging.LogRecord("x", logging.ERROR, "f.py", 1, "m", None, None)
    assert not repeat.filter(again)


def _raw_connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_unfinished_request_heads_time_out_on_real_sockets(tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv", header_timeout_s=0.5) as srv:
        silent = _raw_connect(srv.port)
        half = _raw_connect(srv.port)
        half.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        try:
            started = time.monotonic()
            assert await asyncio.to_thread(_closed_by_server, silent, 5)
            assert await asyncio.to_thread(_closed_by_server, half, 5)
            assert time.monotonic() - started < 3
            assert srv.guard is not None and srv.guard.timed_out == 2
            async with httpx.AsyncClient(base_url=srv.url) as client:  # others still served
                assert (await client.get("/v1/health")).status_code == 200
        finally:
            silent.close()
            half.close()


async def test_connections_past_the_address_cap_are_refused_on_real_sockets(
    tmp_path: Path,
) -> None:
    async with run_server(tmp_path / "srv", max_connections_per_ip=3) as srv:
        held = [_raw_connect(srv.port, "127.0.0.2") for _ in range(3)]
        extra = _raw_connect(srv.port, "127.0.0.2")
        try:
            assert await asyncio.to_thread(_closed_by_server, extra, 5)  # reset at once
            assert srv.guard is not None and srv.guard.refused >= 1
            async with httpx.AsyncClient(
                base_url=srv.url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1")
            ) as client:
                assert (await client.get("/v1/health")).status_code == 200
            assert srv.guard.open_from("127.0.0.2") == 3
        finally:
            for sock in [*held, extra]:
                sock.close()


async def test_a_websocket_keeps_its_place_until_it_closes(tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv", max_connections_per_ip=1) as srv:
        token = await login(srv.url, "alice")
        assert srv.guard is not None
        ws, _ready = await live(srv.ws_url, token)
        try:
            assert srv.guard.open_from("127.0.0.1") == 1
            async with httpx.AsyncClient(base_url=srv.url) as client:
                with pytest.raises(httpx.TransportError):
                    await client.get("/v1/health")  # the one place is the WebSocket's
        finally:
            await ws.close()
        deadline = time.monotonic() + 5
        while srv.guard.open_from("127.0.0.1") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert srv.guard.open_from("127.0.0.1") == 0


# --- who may add whom: block lists --------------------------------------------------------


@pytest.mark.parametrize("kind", ["asgi", "uvicorn"])
async def test_a_blocked_user_cannot_add_the_blocker_anywhere(tmp_path: Path, kind: str) -> None:
    async with open_api(kind, tmp_path) as api:
        for user in ("bob", "mallory", "carol"):
            await api.login(user)
        blocks = "/v1/blocks"
        assert (await api.client.get(blocks, headers=api.auth("bob"))).json() == {"blocked": []}
        r = await api.client.put(f"{blocks}/mallory", headers=api.auth("bob"))
        assert r.status_code == 200 and r.json() == {"blocked": ["mallory"]}
        assert (await api.client.put(f"{blocks}/mallory", headers=api.auth("bob"))).json() == {
            "blocked": ["mallory"]
        }

        # a new conversation with bob in it: refused whole, with the reason
        r = await api.client.post(
            "/v1/conversations",
            json={"id": new_id(), "title": "spam", "members": ["bob", "carol"]},
            headers=api.auth("mallory"),
        )
        assert r.status_code == 403
        assert r.json() == {
            "code": "forbidden",
            "reason": "bob does not accept being added by mallory",
        }
        # the same through an operation: that operation is rejected, the batch goes on
        cid = await api.create("mallory", ["carol"])
        create_op = {
            "op_id": new_id(),
            "kind": "create_conversation",
            "conversation_id": new_id(),
            "title": "spam",
            "members": ["bob"],
        }
        send_op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "hi"}
        refused, sent = await api.ops("mallory", create_op, send_op)
        assert (refused["status"], refused["code"], refused["status_code"]) == (
            "rejected",
            "forbidden",
            403,
        )
        assert sent["status"] == "applied"
        # adding bob to an existing conversation: refused for mallory, not for carol
        add = f"/v1/conversations/{cid}/members"
        r = await api.client.post(add, json={"user": "bob"}, headers=api.auth("mallory"))
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        r = await api.client.post(add, json={"user": "bob"}, headers=api.auth("carol"))
        assert r.status_code == 200 and "bob" in r.json()["members"]

        # unblocked: mallory may add bob again
        r = await api.client.delete(f"{blocks}/mallory", headers=api.auth("bob"))
        assert r.json() == {"blocked": []}
        await api.create("mallory", ["bob"])


async def test_block_requests_are_checked(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path) as api:
        await api.login("bob")
        r = await api.client.put("/v1/blocks/bob", headers=api.auth("bob"))
        assert (r.status_code, r.json()["code"]) == (422, "invalid")
        r = await api.client.put("/v1/blocks/no%20such%20name", headers=api.auth("bob"))
        assert (r.status_code, r.json()["code"]) == (422, "invalid")
        r = await api.client.get("/v1/blocks")
        assert r.status_code == 401
        r = await api.client.post("/v1/blocks/x", headers=api.auth("bob"))
        assert r.status_code == 405


@pytest.mark.timeout(60)
async def test_the_engine_reports_a_refused_creation_as_a_failed_operation(
    tmp_path: Path,
) -> None:
    async with run_server(tmp_path / "srv") as srv:
        token = await login(srv.url, "bob")
        async with httpx.AsyncClient(base_url=srv.url) as http:
            r = await http.put("/v1/blocks/mallory", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
        async with SyncEngine(tmp_path / "mallory.db", **FAST) as mallory:
            failed: list[MessageFailed] = []
            mallory.on(MessageFailed, failed.append)
            await mallory.login(srv.url, "mallory", "mallory-pw")
            conv = await mallory.create_conversation("spam", ["bob"])
            deadline = time.monotonic() + 20
            while not failed and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert failed, "the refused creation never failed"
            assert (failed[0].conversation_id, failed[0].code) == (conv.id, "forbidden")
            assert failed[0].reason == "bob does not accept being added by mallory"
