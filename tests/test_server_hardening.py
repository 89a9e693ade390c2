"""Issue 13 hardening of the reference server, below the end-to-end scenarios
(``tests/scenarios/test_hardening_*.py``): pages bounded in bytes, per-address limits of
logins and registrations, the connection guard and the log's repeat filter.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from syncengine.protocol.errors import Rejection
from syncengine.server import service as service_module
from syncengine.server.app import create_app
from syncengine.server.config import ServerConfig
from syncengine.server.service import ServerService
from tests.conftest_server import make_config, open_api

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
