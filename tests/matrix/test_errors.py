"""Matrix error answers through the transports' boundary (no server: httpx.MockTransport)."""

from __future__ import annotations

import httpx
import pytest

from syncengine.core.policy import Disposition, classify
from syncengine.errors import AuthFailed, RateLimited, Rejected, ServerUnavailable
from syncengine.transport.matrix import MatrixTransport


def _answering(status: int, body: dict, headers: dict | None = None) -> MatrixTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers or {})

    t = MatrixTransport("http://127.0.0.1:9", http_transport=httpx.MockTransport(handler))
    t.set_token("tok")
    t.reader.user_id = "@alice:localhost"
    return t


async def test_a_refused_password_is_auth_failed() -> None:
    t = _answering(403, {"errcode": "M_FORBIDDEN", "error": "Invalid username or password"})
    with pytest.raises(AuthFailed):
        await t.login("alice", "nope", "DEV1")


async def test_an_unknown_token_is_auth_failed() -> None:
    t = _answering(
        401, {"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token", "soft_logout": True}
    )
    with pytest.raises(AuthFailed):
        await t.pull("s1_2", 10)


async def test_limit_exceeded_waits_retry_after_ms() -> None:
    t = _answering(429, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 2500})
    with pytest.raises(RateLimited) as caught:
        await t.pull("s1_2", 10)
    assert caught.value.retry_after == 2.5
    assert classify(caught.value) is Disposition.RETRY
    with pytest.raises(RateLimited):  # the whole client waits it out, nothing is sent
        await t.pull("s1_2", 10)


async def test_a_room_the_user_is_not_in_is_one_failed_operation() -> None:
    t = _answering(403, {"errcode": "M_FORBIDDEN", "error": "User @eve:localhost not in room !r"})
    t.reader.conv_rooms["c1"] = "!r"
    [result] = await t.push([{"op_id": "o1", "kind": "send", "conversation_id": "c1", "body": "x"}])
    assert (result.status, result.code, result.status_code) == ("rejected", "not_found", 403)
    with pytest.raises(Rejected):
        await t.history("c1", None, 10)


async def test_server_errors_and_refused_connections_are_transient() -> None:
    t = _answering(502, {})
    with pytest.raises(ServerUnavailable):
        await t.pull("s1", 10)
    gone = MatrixTransport("http://127.0.0.1:9")  # nothing listens on the discard port
    gone.set_token("tok")
    gone.reader.user_id = "@alice:localhost"
    with pytest.raises(ServerUnavailable):
        await gone.pull("s1", 10)
    await gone.aclose()
