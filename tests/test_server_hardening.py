"""Issue 13 hardening of the reference server, below the end-to-end scenarios
(``tests/scenarios/test_hardening_*.py``): pages bounded in bytes, per-address limits of
logins and registrations, the connection guard and the log's repeat filter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from syncengine.server.config import ServerConfig
from tests.conftest_server import open_api

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
