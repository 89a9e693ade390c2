"""The server as a process: concurrency, restarts, the thread runner, faults and bots."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

try:
    from conftest_server import make_config, open_api
except ModuleNotFoundError:  # tests/ is a package
    from tests.conftest_server import make_config, open_api

from syncengine.models import new_id
from syncengine.server.config import FaultConfig, ServerConfig
from syncengine.server.simulate import lobby_id
from syncengine.server.testing import ServerThread, login, run_server

pytestmark = pytest.mark.timeout(60)


async def test_ten_concurrent_replays_have_one_effect(tmp_path: Path) -> None:
    async with open_api("uvicorn", tmp_path) as api:
        await api.login("alice")
        cid = await api.create("alice", [])
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "once"}
        url = api.server.url if api.server else ""

        async def push(op: dict[str, str]) -> dict[str, object]:
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post(
                    "/v1/ops", json={"ops": [op]}, headers=api.auth("alice")
                )
                return dict(response.json()["results"][0])

        async with asyncio.timeout(20):
            results = await asyncio.gather(*[push(op) for _ in range(10)])
        assert sorted(r["status"] for r in results) == ["applied"] + ["duplicate"] * 9
        assert len({(r["message_id"], r["seq"], r["pos"]) for r in results}) == 1
        assert [m["body"] for m in api.state.all_messages(cid)] == ["once"]

        op["op_id"] = new_id()
        async with asyncio.timeout(20):
            results = await asyncio.gather(*[push({**op, "body": f"{i}"}) for i in range(10)])
        assert sorted(str(r["status"]) for r in results) == ["applied"] + ["rejected"] * 9
        assert {r.get("code") for r in results if r["status"] == "rejected"} == {"op_id_conflict"}
        assert len(api.state.all_messages(cid)) == 2


async def test_restart_on_the_same_port_keeps_everything(tmp_path: Path) -> None:
    async with run_server(tmp_path / "server") as srv:
        token = await login(srv.url, "alice")
        headers = {"Authorization": f"Bearer {token}"}
        cid = new_id()
        async with httpx.AsyncClient(base_url=srv.url, headers=headers) as client:
            await client.post("/v1/conversations", json={"id": cid, "title": "t"})
            op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "kept"}
            first = (await client.post("/v1/ops", json={"ops": [op]})).json()["results"][0]
        url = srv.url
        await srv.stop()
        assert not srv.running
        assert [m["body"] for m in srv.state.all_messages(cid)] == ["kept"]
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=url) as client:
                await client.get("/v1/health")
        await srv.start()
        assert srv.url == url
        assert srv.state.users() == ["alice"]
        assert srv.state.all_conversations() == [
            {"id": cid, "title": "t", "members": ["alice"], "last_seq": 2, "created_by": "alice"}
        ]
        async with httpx.AsyncClient(base_url=srv.url, headers=headers) as client:
            assert (await client.get("/v1/health")).json() == {"ok": True, "head": 2}
            replay = (await client.post("/v1/ops", json={"ops": [op]})).json()["results"][0]
            assert replay == {**first, "status": "duplicate"}
            op2 = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "new"}
            second = (await client.post("/v1/ops", json={"ops": [op2]})).json()["results"][0]
            assert (second["seq"], second["pos"]) == (3, 3)
            assert second["ts_ms"] >= first["ts_ms"]


async def test_retention_survives_a_restart(tmp_path: Path) -> None:
    async with run_server(tmp_path / "server", retention=3) as srv:
        token = await login(srv.url, "alice")
        cid = new_id()
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            await client.post("/v1/conversations", json={"id": cid, "title": "t"})
            ops = [
                {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": str(i)}
                for i in range(6)
            ]
            await client.post("/v1/ops", json={"ops": ops})
            await srv.stop()
            await srv.start()
            gone = await client.get("/v1/events", params={"since": 0})
            assert gone.status_code == 410 and gone.json()["oldest_pos"] == 5
            assert [e["pos"] for e in srv.state.all_events()] == [5, 6, 7]


def test_server_thread_serves_blocking_callers(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with ServerThread(config) as srv:
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        assert srv.ws_url == f"ws://127.0.0.1:{srv.port}/v1/live"
        with httpx.Client(base_url=srv.url) as client:
            token = client.post(
                "/v1/login", json={"user": "alice", "password": "pw", "device": "d"}
            ).json()["token"]
            cid = new_id()
            client.post(
                "/v1/conversations",
                json={"id": cid, "title": "t"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert srv.state.members(cid) == ("alice",)
        assert srv.drop_live_connections() == 0
        srv.faults.error_rate = 1.0
        with httpx.Client(base_url=srv.url) as client:
            assert client.get("/v1/conversations").status_code == 503
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url=srv.url) as client:
        client.get("/v1/health")


def test_server_thread_reports_a_failed_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = make_config(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="failed to start"):
            ServerThread(config).start()


# --- faults -------------------------------------------------------------------------------


async def test_injected_5xx_happen_before_the_effect(tmp_path: Path) -> None:
    faults = FaultConfig(seed=7)
    async with open_api("asgi", tmp_path, faults=faults) as api:
        await api.login("alice")
        cid = await api.create("alice", [])
        faults.error_rate = 1.0
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "x"}
        response = await api.client.post("/v1/ops", json={"ops": [op]}, headers=api.auth("alice"))
        assert response.status_code == 503
        assert response.json() == {"code": "unavailable", "reason": "injected fault"}
        assert (await api.client.get("/v1/health")).status_code == 200
        assert api.state.all_messages(cid) == []
        assert faults.injected["5xx"] == 1


async def test_lost_acks_keep_the_effect(tmp_path: Path) -> None:
    faults = FaultConfig()
    async with open_api("asgi", tmp_path, faults=faults) as api:
        await api.login("alice")
        cid = await api.create("alice", [])
        faults.lost_ack_rate = 1.0
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "x"}
        response = await api.client.post("/v1/ops", json={"ops": [op]}, headers=api.auth("alice"))
        assert response.status_code == 503
        assert len(api.state.all_messages(cid)) == 1
        faults.clear()
        (replay,) = await api.ops("alice", op)
        assert replay["status"] == "duplicate"


async def test_injected_delay(tmp_path: Path) -> None:
    async with open_api("asgi", tmp_path, faults=FaultConfig(delay_ms=100)) as api:
        start = time.monotonic()
        await api.client.get("/v1/conversations")
        assert time.monotonic() - start >= 0.1


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        FaultConfig(error_rate=1.5)
    with pytest.raises(ValueError, match="port"):
        ServerConfig(data_dir=".", port=70000)
    with pytest.raises(ValueError, match="retention"):
        ServerConfig(data_dir=".", retention=0)


def test_registration_defaults_to_open_only_on_loopback() -> None:
    assert ServerConfig(data_dir=".", host="127.0.0.1").registration_open
    assert ServerConfig(data_dir=".", host="::1").registration_open
    assert ServerConfig(data_dir=".", host="localhost").registration_open
    assert not ServerConfig(data_dir=".", host="0.0.0.0").registration_open
    assert ServerConfig(data_dir=".", host="0.0.0.0", open_registration=True).registration_open


# --- the simulator ------------------------------------------------------------------------


async def test_bots_talk_type_and_welcome_new_users(tmp_path: Path) -> None:
    async with open_api(
        "uvicorn", tmp_path, simulate=3, simulate_rate=40.0, simulate_seed=3
    ) as api:
        await api.login("alice")
        lobby = lobby_id(3)
        assert "alice" in api.state.members(lobby)
        async with asyncio.timeout(10):
            while len(api.state.all_messages(lobby)) < 5:
                await asyncio.sleep(0.05)
        senders = {m["sender"] for m in api.state.all_messages(lobby)}
        assert senders <= {"bot1", "bot2", "bot3"}
        events = await api.pull_all("alice")
        assert any(e["type"] == "message_received" for e in events)
        presence = (await api.client.get("/v1/presence", headers=api.auth("alice"))).json()
        statuses = {p["user"]: p["status"] for p in presence["presence"]}
        assert statuses["bot1"] in ("online", "away")
        bad = await api.client.post(
            "/v1/login", json={"user": "bot1", "password": "guess", "device": "d"}
        )
        assert bad.status_code == 401
