"""What the REST transport puts on the wire, request by request (issue 19).

Mutation testing showed the transport's requests were checked only end to end: a method,
path, query key, JSON key or header changed in ``transport/rest.py`` survived every fast test.
Each test here records the request the transport builds (``httpx.MockTransport``, no socket)
and compares it with wire v1 (``/work/shared/CONTRACT.md``), and checks how the answer is read.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from syncengine.errors import AuthFailed, SyncEngineError, UsageError, WireError
from syncengine.transport.rest import RestTransport, error_from_response

BASE = "http://127.0.0.1:9"

ANSWERS: dict[tuple[str, str], Any] = {
    ("GET", "/v1/health"): {"ok": True},
    ("POST", "/v1/login"): {"token": "tok-1"},
    ("POST", "/v1/ops"): {"results": [{"op_id": "a", "status": "applied"}]},
    ("GET", "/v1/events"): {"events": [], "next": 7, "has_more": False},
    ("GET", "/v1/conversations/c1/messages"): {"messages": [], "end_of_history": True},
    ("GET", "/v1/conversations"): {"conversations": [], "head": 4},
    ("GET", "/v1/presence"): {"presence": []},
    ("POST", "/v1/conversations"): {"id": "c1", "title": "t"},
}


class Recorder:
    """A fake server answering each v1 route with a canned 200; keeps every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = ANSWERS.get((request.method, request.url.path))
        if body is None:
            return httpx.Response(404, json={"code": "not_found", "reason": request.url.path})
        return httpx.Response(200, json=body)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def seen(self) -> tuple[str, str, dict[str, str], Any]:
        r = self.last
        body = orjson.loads(r.content) if r.content else None
        return r.method, r.url.path, dict(r.url.params), body


@pytest.fixture
def server() -> Recorder:
    return Recorder()


@pytest.fixture
async def transport(server: Recorder) -> Any:
    t = RestTransport(BASE, http_transport=httpx.MockTransport(server))
    yield t
    await t.aclose()


async def test_health_is_an_anonymous_get(transport: RestTransport, server: Recorder) -> None:
    assert await transport.health() == {"ok": True}
    assert server.seen() == ("GET", "/v1/health", {}, None)
    assert "authorization" not in server.last.headers
    assert server.last.headers["user-agent"] == "syncengine/0.1"


async def test_login_posts_the_credentials_and_returns_the_token(
    transport: RestTransport, server: Recorder
) -> None:
    assert await transport.login("alice", "pw", "laptop") == "tok-1"
    assert server.seen() == (
        "POST",
        "/v1/login",
        {},
        {"user": "alice", "password": "pw", "device": "laptop"},
    )
    assert server.last.headers["content-type"] == "application/json"


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 5}, {"token": None}])
async def test_a_login_answer_without_a_usable_token_is_a_wire_error(body: Any) -> None:
    t = RestTransport(
        BASE, http_transport=httpx.MockTransport(lambda r: httpx.Response(200, json=body))
    )
    with pytest.raises(WireError) as info:
        await t.login("a", "b", "c")
    assert info.value.field == "token"


async def test_every_request_after_login_carries_the_bearer_token(
    transport: RestTransport, server: Recorder
) -> None:
    transport.set_token("tok-9")
    await transport.pull(3, 50)
    assert server.last.headers["authorization"] == "Bearer tok-9"
    transport.set_token(None)
    await transport.pull(3, 50)
    assert "authorization" not in server.last.headers


async def test_push_posts_the_ops_under_one_key(transport: RestTransport, server: Recorder) -> None:
    results = await transport.push([{"op_id": "a", "kind": "send"}])
    assert [(r.op_id, r.status) for r in results] == [("a", "applied")]
    assert server.seen() == ("POST", "/v1/ops", {}, {"ops": [{"op_id": "a", "kind": "send"}]})
    assert server.last.headers["content-type"] == "application/json"


async def test_pull_asks_since_and_limit(transport: RestTransport, server: Recorder) -> None:
    page = await transport.pull(12, 50)
    assert page.next == 7 and not page.has_more
    assert server.seen() == ("GET", "/v1/events", {"since": "12", "limit": "50"}, None)
    assert server.last.content == b"" and "content-type" not in server.last.headers


async def test_history_asks_before_only_when_given(
    transport: RestTransport, server: Recorder
) -> None:
    page = await transport.history("c1", None, 20)
    assert page.end_of_history
    assert server.seen() == ("GET", "/v1/conversations/c1/messages", {"limit": "20"}, None)
    await transport.history("c1", 9, 20)
    assert server.seen()[2] == {"limit": "20", "before": "9"}


async def test_snapshots_read_conversations_and_presence(
    transport: RestTransport, server: Recorder
) -> None:
    assert await transport.conversations() == ([], 4)
    assert server.seen() == ("GET", "/v1/conversations", {}, None)
    assert await transport.presence() == []
    assert server.seen() == ("GET", "/v1/presence", {}, None)


async def test_create_conversation_posts_id_title_members(
    transport: RestTransport, server: Recorder
) -> None:
    assert (await transport.create_conversation("c1", "t", ("bob",)))["id"] == "c1"
    assert server.seen() == (
        "POST",
        "/v1/conversations",
        {},
        {"id": "c1", "title": "t", "members": ["bob"]},
    )


@pytest.mark.parametrize("body", [b"[]", b"3", b'"x"'])
async def test_an_answer_that_is_not_a_json_object_is_a_wire_error(body: bytes) -> None:
    t = RestTransport(
        BASE, http_transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    )
    with pytest.raises(WireError) as info:
        await t.health()
    assert info.value.field == "body"


def test_the_live_url_follows_the_base_url() -> None:
    assert RestTransport("http://127.0.0.1:9/").live_url == "ws://127.0.0.1:9/v1/live"
    assert RestTransport("https://example.org").live_url == "wss://example.org/v1/live"
    assert RestTransport(BASE, live_url="ws://x/y").live_url == "ws://x/y"


def test_plain_http_to_a_remote_host_is_refused_unless_allowed() -> None:
    with pytest.raises(UsageError):
        RestTransport("http://example.org")
    assert RestTransport("http://example.org", allow_insecure=True).base_url == "http://example.org"


async def test_the_live_channel_needs_a_token(transport: RestTransport) -> None:
    with pytest.raises(AuthFailed):
        await transport.connect_live()


@pytest.mark.parametrize("status", [200, 204, 299])
async def test_a_2xx_answer_is_a_success(status: int) -> None:
    t = RestTransport(
        BASE, http_transport=httpx.MockTransport(lambda r: httpx.Response(status, json={}))
    )
    assert await t.health() == {}


@pytest.mark.parametrize("status", [300, 301, 304])
async def test_a_3xx_answer_is_not_followed_nor_taken_as_success(status: int) -> None:
    t = RestTransport(
        BASE, http_transport=httpx.MockTransport(lambda r: httpx.Response(status, json={}))
    )
    with pytest.raises(SyncEngineError):
        await t.health()


def test_an_error_without_a_reason_takes_the_reason_phrase_then_a_default() -> None:
    req = httpx.Request("GET", BASE)
    err = error_from_response(httpx.Response(422, content=b"", request=req))
    assert "Unprocessable" in str(err)
    bare = httpx.Response(422, content=b"{}", request=req, extensions={"reason_phrase": b""})
    assert "request failed" in str(error_from_response(bare))
    long = {"code": "bad", "reason": "x" * 2000}
    err = error_from_response(httpx.Response(422, json=long, request=req))
    assert getattr(err, "reason", "") == "x" * 500
