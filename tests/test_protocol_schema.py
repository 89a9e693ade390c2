"""The protocol's JSON Schema against recorded frames, the wire decoders and the real server.

- Every sample in ``tests/data/frames/`` validates against the schema definition named by
  its file name (``NAME.json`` or ``NAME.variant.json``).
- Every sample in ``tests/data/frames/malformed/`` is rejected by the ``syncengine.wire``
  decoder named by its file name, and (when it is JSON at all) by the schema too.
- Everything the real server sends in a full session (REST bodies and live frames) validates.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from syncengine import wire
from syncengine.errors import WireError
from syncengine.models import new_id
from syncengine.server.testing import run_server

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "protocol.schema.json").read_text(encoding="utf-8"))
FRAMES = Path(__file__).parent / "data" / "frames"
MALFORMED = FRAMES / "malformed"
SAMPLES = sorted(FRAMES.glob("*.json"))
BAD_SAMPLES = sorted(p for p in MALFORMED.iterdir() if p.is_file())


def validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for one definition of the schema."""
    assert name in SCHEMA["$defs"], f"no schema definition {name!r}"
    return jsonschema.Draft202012Validator(
        {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"}
    )


def check(name: str, obj: Any) -> None:
    """Fail with the schema's message when ``obj`` is not a valid ``name``."""
    errors = sorted(validator(name).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{name}: {errors[0].message} at {list(errors[0].path)}"


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_every_definition_has_a_sample() -> None:
    sampled = {p.name.split(".")[0] for p in SAMPLES}
    scalars = {"uuid", "op_id", "user", "device", "pos", "cursor", "seq", "ts_ms", "body"}
    scalars |= {"title", "members", "status", "code", "reason"}
    unions = {"durable_event", "server_event", "live_frame", "client_frame", "op", "op_result"}
    unions |= {"send_op", "edit_op", "delete_op", "mark_read_op", "create_conversation_op"}
    unions |= {"member_op", "react_op"}
    unions |= {"presence_entry", "history_message"}
    assert set(SCHEMA["$defs"]) - scalars - unions - sampled == set()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_recorded_samples_validate(path: Path) -> None:
    check(path.name.split(".")[0], json.loads(path.read_text(encoding="utf-8")))


def _live_event(data: bytes) -> object:
    return wire.decode_event(wire.decode_frame(data.decode("utf-8", "surrogatepass")))


DECODERS: dict[str, tuple[Callable[[bytes], object], str]] = {
    "event": (lambda data: wire.decode_event(wire.decode_json(data)), "server_event"),
    "frame": (_live_event, "live_frame"),
    "json": (wire.decode_json, "live_frame"),
    "page": (lambda data: wire.decode_page(data, lenient=False), "events_page"),
    "op_results": (wire.decode_op_results, "ops_response"),
    "history": (wire.decode_history, "history_page"),
}


@pytest.mark.parametrize("path", BAD_SAMPLES, ids=lambda p: p.name)
def test_malformed_samples_are_rejected(path: Path) -> None:
    decode, definition = DECODERS[path.name.split(".")[0]]
    data = path.read_bytes()
    with pytest.raises(WireError):
        decode(data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return  # not JSON at all: nothing for the schema to say
    assert not validator(definition).is_valid(obj), "the schema accepts what the decoder refuses"


def test_recorded_samples_decode_with_wire() -> None:
    for name in ("message_received", "conversation_updated", "typing_started", "error.invalid"):
        event = wire.decode_event(json.loads((FRAMES / f"{name}.json").read_text()))
        assert event.type == name.split(".")[0]
    page = wire.decode_page((FRAMES / "events_page.json").read_bytes(), lenient=False)
    assert page.events and not page.bad
    assert wire.decode_op_results((FRAMES / "ops_response.json").read_bytes())
    assert wire.decode_history((FRAMES / "history_page.json").read_bytes()).end_of_history


async def test_what_the_real_server_sends_validates(tmp_path: Path) -> None:
    """A full session; every body and frame is checked against its definition."""
    checked: list[str] = []

    def ok(name: str, response: httpx.Response | Any, status: int = 200) -> Any:
        if isinstance(response, httpx.Response):
            assert response.status_code == status, response.text
            response = response.json()
        check(name, response)
        checked.append(name)
        return response

    limits = {"rate_per_s": 1.0, "rate_burst": 30, "typing_ttl_s": 0.1, "presence_leave_s": 0.05}
    async with (
        run_server(tmp_path / "server", retention=5, **limits) as srv,
        httpx.AsyncClient(base_url=srv.url) as c,
    ):
        ok("health", await c.get("/v1/health"))
        login = {"user": "alice", "password": "pw", "device": "laptop"}
        check("login_request", login)
        ta = ok("login_response", await c.post("/v1/login", json=login))["token"]
        tb = (
            await c.post("/v1/login", json={"user": "bob", "password": "pw", "device": "phone"})
        ).json()["token"]
        a, b = {"Authorization": f"Bearer {ta}"}, {"Authorization": f"Bearer {tb}"}
        cid = new_id()
        body = {"id": cid, "title": "t", "members": ["bob"]}
        check("create_conversation_request", body)
        ok("conversation", await c.post("/v1/conversations", json=body, headers=a), 201)
        frames: list[dict[str, Any]] = []

        async def collect_until(ws: ClientConnection, kind: str, status: str = "") -> None:
            while True:
                frames.append(json.loads(await ws.recv()))
                if frames[-1]["type"] == kind and frames[-1].get("status", "") == status:
                    return

        async with asyncio.timeout(10), connect(srv.ws_url, compression=None) as wb:
            await wb.send(json.dumps({"type": "auth", "token": tb}))
            frames.append(json.loads(await wb.recv()))
            async with connect(srv.ws_url, compression=None) as wa:
                await wa.send(json.dumps({"type": "auth", "token": ta}))
                await wa.recv()
                send = new_id()
                ops = {
                    "ops": [
                        {"op_id": send, "kind": "send", "conversation_id": cid, "body": "hi"},
                        {"op_id": new_id(), "kind": "edit", "conversation_id": cid,
                         "target_op_id": send, "body": "hi!"},
                        {"op_id": new_id(), "kind": "delete", "conversation_id": cid,
                         "target_op_id": send},
                        {"op_id": new_id(), "kind": "mark_read", "conversation_id": cid, "seq": 2},
                        {"op_id": new_id(), "kind": "create_conversation",
                         "conversation_id": new_id(), "title": "x", "members": []},
                        {"op_id": new_id(), "kind": "send", "conversation_id": new_id(),
                         "body": "nowhere"},
                        {"op_id": send, "kind": "send", "conversation_id": cid, "body": "hi"},
                    ]
                }  # fmt: skip
                check("ops_request", ops)
                results = ok("ops_response", await c.post("/v1/ops", json=ops, headers=a))
                assert [r["status"] for r in results["results"]][-2:] == ["rejected", "duplicate"]
                await c.patch(f"/v1/conversations/{cid}", json={"title": "u"}, headers=a)
                await c.post(f"/v1/conversations/{cid}/members", json={"user": "c"}, headers=a)
                await wa.send(
                    json.dumps({"type": "typing", "conversation_id": cid, "typing": True})
                )
                await wa.send(json.dumps({"type": "presence", "status": "away"}))
                await collect_until(wb, "typing_stopped")
            await wb.send("{")
            await collect_until(wb, "error")
            await collect_until(wb, "presence_changed", "offline")
        for frame in frames:
            ok("live_frame", frame)
        kinds = {f["type"] for f in frames}
        assert kinds >= {
            "ready",
            "message_received",
            "message_updated",
            "message_deleted",
            "read_receipt",
            "conversation_updated",
            "typing_started",
            "typing_stopped",
            "presence_changed",
        }
        ok("error_body", await c.get("/v1/events", params={"since": 0}, headers=b), 410)
        page = ok("events_page", await c.get("/v1/events", params={"since": 3}, headers=b))
        assert page["events"]
        ok("history_page", await c.get(f"/v1/conversations/{cid}/messages", headers=b))
        ok("conversation_list", await c.get("/v1/conversations", headers=b))
        ok("presence_list", await c.get("/v1/presence", headers=b))
        ok("error_body", await c.get("/v1/events", headers={"Authorization": "Bearer x"}), 401)
        ok("error_body", await c.get(f"/v1/conversations/{new_id()}/messages", headers=b), 404)
        ok("error_body", await c.post("/v1/ops", json={"ops": 1}, headers=b), 422)
        ok("error_body", await c.post("/v1/ops", content=b"{", headers=b), 400)
        while (response := await c.get("/v1/presence", headers=b)).status_code != 429:
            pass
        ok("error_body", response, 429)
    assert len(checked) >= 15
