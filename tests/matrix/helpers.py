"""Helpers of the Matrix tests: a logged-in transport, ops, and reading what nio sees."""

from __future__ import annotations

import uuid
from typing import Any

from nio import AsyncClient

from syncengine.transport.matrix import MatrixTransport
from tests.matrix.conftest import PASSWORD


async def transport(url: str, name: str, device: str = "DEV1", **options: Any) -> MatrixTransport:
    """A :class:`MatrixTransport` logged in as ``name`` with ``device``."""
    t = MatrixTransport(url, **options)
    t.set_token(await t.login(name, PASSWORD, device))
    return t


def create_op(members: list[str], title: str = "room") -> dict[str, Any]:
    """A ``create_conversation`` op for a new conversation id."""
    cid = str(uuid.uuid4())
    return {
        "op_id": f"c-{cid}",
        "kind": "create_conversation",
        "conversation_id": cid,
        "title": title,
        "members": members,
    }


def send_op(cid: str, body: str, op_id: str | None = None) -> dict[str, Any]:
    """A ``send`` op."""
    return {
        "op_id": op_id or f"s-{uuid.uuid4()}",
        "kind": "send",
        "conversation_id": cid,
        "body": body,
    }


async def nio_join_all(client: AsyncClient) -> str:
    """Sync once, join every invite, sync again; the next_batch."""
    first = await client.sync(timeout=0)
    for room_id in first.rooms.invite:
        await client.join(room_id)
    return str((await client.sync(timeout=0, since=first.next_batch)).next_batch)


async def nio_timeline(client: AsyncClient, room_id: str) -> list[dict[str, Any]]:
    """Every event of a room as nio reads it from ``/messages`` (oldest first)."""
    events: list[dict[str, Any]] = []
    token = None
    while True:
        resp = await client.room_messages(room_id, start=token, limit=100)
        events.extend(e.source for e in resp.chunk)
        if not resp.chunk or not resp.end:
            return events[::-1]
        token = resp.end


def bodies_by_op(events: list[dict[str, Any]]) -> dict[str, int]:
    """How many ``m.room.message`` events (not edits) carry each op id."""
    counts: dict[str, int] = {}
    for e in events:
        content = e.get("content") or {}
        if e.get("type") == "m.room.message" and "m.relates_to" not in content:
            op = content.get("net.syncengine.op_id")
            if op:
                counts[op] = counts.get(op, 0) + 1
    return counts
