"""The REST transport: every status mapping and the exception boundary.

Why ``httpx.MockTransport`` here: what is under test is the transport's own logic (which
typed error and disposition each status becomes, which foreign exception becomes which
``syncengine.errors`` exception, how bodies are bounded and decoded), and a mock answers each
status and raises each httpx exception on demand, with no server and no timing. Whether a
real server sends those answers is the server's business and is covered by the end-to-end
tests (``test_engine.py``, ``test_server_*.py``); the few cases a mock cannot fake honestly
(a refused port, a certificate that does not verify) use real sockets on 127.0.0.1 below.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import trustme

from syncengine import wire
from syncengine.core.policy import Disposition, classify
from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    RateLimited,
    Rejected,
    ServerUnavailable,
    SyncEngineError,
    TLSVerificationFailed,
    UsageError,
    WireError,
)
from syncengine.transport import ConversationList, ConversationSnapshot, PresenceSnapshot
from syncengine.transport.rest import BodyTooLarge, RestTransport, error_from_response

Handler = Callable[[httpx.Request], httpx.Response]
PAGE = {"events": [], "next": 7, "has_more": False}


def make(handler: Handler, **kwargs: Any) -> RestTransport:
    return RestTransport(
        "http://127.0.0.1:9", http_transport=httpx.MockTransport(handler), **kwargs
    )


def answer(status: int, body: Any = None, **headers: str) -> Handler:
    content = b"" if body is None else orjson.dumps(body)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return handler


def raising(exc: BaseException) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


# --- the status table, through the transport -------------------------------------------------

# (status, Retry-After header, expected exception type, expected disposition)
STATUS_CASES = [
    (400, None, Rejected, Disposition.FAIL_OP),
    (401, None, AuthFailed, Disposition.LOGIN),
    (403, None, Rejected, Disposition.FAIL_OP),
    (404, None, Rejected, Disposition.FAIL_OP),
    (408, None, ServerUnavailable, Disposition.RETRY),
    (409, None, Rejected, Disposition.FAIL_OP),
    (410, None, CursorExpired, Disposition.RESYNC),
    (413, None, Rejected, Disposition.FAIL_OP),
    (422, None, Rejected, Disposition.FAIL_OP),
    (429, None, RateLimited, Disposition.RETRY),
    (429, "3", RateLimited, Disposition.RETRY),
    (500, None, ServerUnavailable, Disposition.RETRY),
    (502, None, ServerUnavailable, Disposition.RETRY),
    (503, None, ServerUnavailable, Disposition.RETRY),
    (504, None, ServerUnavailable, Disposition.RETRY),
]


@pytest.mark.parametrize(("status", "retry_after", "error", "disposition"), STATUS_CASES)
async def test_each_status_becomes_its_error_and_disposition(
    status: int, retry_after: str | None, error: type[SyncEngineError], disposition: Disposition
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"code": "some_code", "reason": "some reason"}
    transport = make(answer(status, body, **headers))
    with pytest.raises(SyncEngineError) as info:
        await transport.pull(0, 10)
    exc = info.value
    assert type(exc) is error
    assert classify(exc) is disposition
    if isinstance(exc, Rejected):
        assert (exc.code, exc.reason, exc.status) == ("some_code", "some reason", status)
    if isinstance(exc, RateLimited):
        assert exc.retry_after == (3.0 if retry_after else None)
    await transport.aclose()


async def test_plain_500_on_a_push_is_transient_not_a_verdict() -> None:
    transport = make(answer(500))  # no body at all, as a crashing proxy answers
    with pytest.raises(ServerUnavailable, match="server error 500: Internal Server Error"):
        await transport.push([{"op_id": "a", "kind": "send"}])
    await transport.aclose()


async def test_retry_after_holds_every_request_until_it_passed() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(429, headers={"Retry-After": "30"})

    transport = make(handler)
    with pytest.raises(RateLimited) as first:
        await transport.pull(0, 10)
    assert first.value.retry_after == 30.0
    with pytest.raises(RateLimited) as second:
        await transport.push([])  # another endpoint: the whole client waits
    assert 0 < (second.value.retry_after or 0) <= 30.0
    assert calls == ["/v1/events"]  # nothing was sent while the pause held
    await transport.aclose()


async def test_the_bodys_milliseconds_win_over_the_whole_second_header() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, headers={"Retry-After": "1"}, json={"code": "rate_limited", "retry_after_ms": 20}
        )

    transport = make(handler)
    with pytest.raises(RateLimited) as info:
        await transport.pull(0, 10)
    assert info.value.retry_after == 0.02
    await transport.aclose()


async def test_retry_after_from_the_body_when_the_header_is_missing() -> None:
    transport = make(answer(429, {"code": "rate_limited", "retry_after_ms": 1500}))
    with pytest.raises(RateLimited) as info:
        await transport.pull(0, 10)
    assert info.value.retry_after == 1.5
    await transport.aclose()


async def test_429_without_any_pause_does_not_block_the_client() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429) if len(calls) == 1 else httpx.Response(200, json=PAGE)

    transport = make(handler)
    with pytest.raises(RateLimited):
        await transport.pull(0, 10)
    assert (await transport.pull(0, 10)).next == 7
    await transport.aclose()


async def test_an_error_page_that_is_not_json_keeps_its_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"<html>bad gateway</html>")

    transport = make(handler)
    with pytest.raises(ServerUnavailable, match="502: Bad Gateway"):
        await transport.pull(0, 10)
    await transport.aclose()


async def test_a_huge_error_page_is_cut_not_refused() -> None:
    transport = make(answer(503, {"code": "busy", "reason": "x" * (1 << 20)}))
    with pytest.raises(ServerUnavailable):  # not a WireError: the status decides
        await transport.pull(0, 10)
    await transport.aclose()


def test_error_from_response_is_derived_from_the_table() -> None:
    resp = httpx.Response(413, json={"code": "too_large", "reason": "big"})
    exc = error_from_response(resp)
    assert isinstance(exc, Rejected) and exc.status == 413 and exc.code == "too_large"
    resp = httpx.Response(429, headers={"Retry-After": "2"})
    limited = error_from_response(resp)
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0


# --- the exception boundary -----------------------------------------------------------------


@pytest.mark.parametrize(
    "foreign",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.PoolTimeout("pool timed out"),
        httpx.ReadError("connection reset"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("peer closed connection without response"),
        httpx.ProxyError("proxy said no"),
        ConnectionResetError(104, "reset by peer"),
        ssl.SSLError("decryption failed"),
        TimeoutError(),
        ExceptionGroup("connect", [ConnectionRefusedError(111, "refused")]),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_network_failures_are_server_unavailable(foreign: Exception) -> None:
    transport = make(raising(foreign))
    with pytest.raises(ServerUnavailable) as info:
        await transport.pull(0, 10)
    assert info.value.__cause__ is foreign
    assert classify(info.value) is Disposition.RETRY
    await transport.aclose()


async def test_a_certificate_failure_inside_an_httpx_error_is_tls_verification_failed() -> None:
    cert_error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    try:
        raise httpx.ConnectError("handshake failed") from cert_error
    except httpx.ConnectError as exc:
        wrapped = exc
    transport = make(raising(wrapped))
    with pytest.raises(TLSVerificationFailed) as info:
        await transport.pull(0, 10)
    assert info.value.__cause__ is wrapped
    assert classify(info.value) is Disposition.STOP
    await transport.aclose()


async def test_a_refused_port_is_server_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nothing listens
    transport = RestTransport(f"http://127.0.0.1:{port}", timeout_s=5)
    with pytest.raises(ServerUnavailable) as info:
        await transport.health()
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    await transport.aclose()


@pytest.fixture
async def untrusted_tls_port() -> AsyncIterator[int]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.integration
async def test_an_untrusted_certificate_is_tls_verification_failed(
    untrusted_tls_port: int,
) -> None:
    transport = RestTransport(f"https://127.0.0.1:{untrusted_tls_port}", timeout_s=5)
    with pytest.raises(TLSVerificationFailed):
        await transport.health()
    await transport.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:abc",
        "http://[::1",
        "http://127.0.0.1:-1",
        "ftp://127.0.0.1",
        "127.0.0.1:8080",
        "http://user:pw@127.0.0.1",
    ],
)
def test_a_malformed_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError):
        RestTransport(url)


async def test_url_errors_raised_while_sending_are_usage_errors() -> None:
    # A port out of range slips past httpx's parser and fails at connect(), inside a group.
    overflow = ExceptionGroup("connect", [OverflowError("port must be 0-65535")])
    transport = make(raising(overflow))
    with pytest.raises(UsageError) as info:
        await transport.pull(0, 10)
    assert info.value.__cause__ is overflow
    assert classify(info.value) is Disposition.STOP
    transport = make(raising(httpx.InvalidURL("Invalid port: 'abc'")))
    with pytest.raises(UsageError):
        await transport.pull(0, 10)
    await transport.aclose()


async def test_a_token_that_cannot_be_a_header_is_a_usage_error() -> None:
    transport = make(answer(200, PAGE))
    transport.set_token("t\u00f6k\u00e9n\u2603")
    with pytest.raises(UsageError) as info:
        await transport.pull(0, 10)
    assert isinstance(info.value.__cause__, UnicodeError)
    await transport.aclose()


@pytest.mark.parametrize(
    "op",
    [{"op_id": "a", "body": {1, 2}}, {"op_id": "a", "body": object()}, {"body": "\ud800"}],
    ids=["set", "object", "lone-surrogate"],
)
async def test_a_body_json_cannot_carry_is_a_usage_error(op: dict[str, Any]) -> None:
    transport = make(answer(200, {"results": []}))
    with pytest.raises(UsageError) as info:
        await transport.push([op])
    assert isinstance(info.value.__cause__, TypeError)
    await transport.aclose()


@pytest.mark.parametrize(
    "content", [b"<html>ok</html>", b"", b"[1, 2]", b'{"events": "no"}', b"\xff\xfe"]
)
async def test_a_body_that_is_not_the_protocol_is_a_wire_error(content: bytes) -> None:
    transport = make(lambda request: httpx.Response(200, content=content))
    with pytest.raises(WireError):
        await transport.pull(0, 10)
    await transport.aclose()


async def test_an_oversized_body_is_refused_by_its_declared_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_PAGE_BYTES", 1000)
    transport = make(lambda request: httpx.Response(200, content=b" " * 2000))
    with pytest.raises(WireError, match="too large"):
        await transport.pull(0, 10)
    await transport.aclose()


async def test_an_oversized_body_without_a_length_is_refused_while_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_PAGE_BYTES", 1000)
    sent = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            sent.append(1)
            yield b" " * 100

    transport = make(lambda request: httpx.Response(200, content=chunks()))
    with pytest.raises(WireError, match="too large"):
        await transport.pull(0, 10)
    assert len(sent) < 100  # reading stopped at the limit, not at the end
    await transport.aclose()


def _event(pos: int, body: str) -> dict[str, Any]:
    return {
        "type": "message_received",
        "pos": pos,
        "conversation_id": "c1",
        "seq": pos,
        "ts_ms": 1_764_100_000_000 + pos,
        "message_id": f"m{pos}",
        "op_id": None,
        "sender": "mallory",
        "body": body,
    }


def _unbounded_server(events: int, body: str, asked: list[int]) -> Handler:
    """A server that bounds its pages in events only (like the reference server before
    issue 13): pages of ``limit`` events of ``body``."""

    def handler(request: httpx.Request) -> httpx.Response:
        since = int(request.url.params["since"])
        limit = int(request.url.params["limit"])
        asked.append(limit)
        page = [_event(p, body) for p in range(since + 1, min(events, since + limit) + 1)]
        nxt = page[-1]["pos"] if page else since
        return httpx.Response(
            200, content=orjson.dumps({"events": page, "next": nxt, "has_more": nxt < events})
        )

    return handler


async def test_a_pull_over_the_body_limit_asks_for_smaller_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13: a page over the limit is asked for again with half the limit; the smaller
    page continues from its next, and later pulls keep the size that fits until the end."""
    monkeypatch.setattr(wire, "MAX_PAGE_BYTES", 10_000)
    asked: list[int] = []
    transport = make(_unbounded_server(40, "x" * 900, asked))  # about 1 KB an event
    page = await transport.pull(0, 500)
    assert asked == [500, 250, 125, 62, 31, 15, 7]  # 7 events fit in 10 KB, 15 do not
    assert [e.pos for e in page.events] == list(range(1, 8)) and page.has_more
    assert transport.pull_limit_cap == 7
    since, pulls = page.next, 1
    while page.has_more:
        page = await transport.pull(since, 500)
        since, pulls = page.next, pulls + 1
    assert since == 40 and pulls == 6  # 40 events in pages of 7, no refused page again
    assert asked[7:] == [7] * 5
    assert transport.pull_limit_cap is None  # the end was reached: ask as the caller asks
    await transport.aclose()


async def test_a_single_event_over_the_limit_is_not_retried_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_PAGE_BYTES", 1000)
    asked: list[int] = []
    transport = make(_unbounded_server(3, "x" * 2000, asked))
    with pytest.raises(BodyTooLarge, match="too large") as exc:
        await transport.pull(0, 1000)
    assert isinstance(exc.value, WireError)
    assert asked == [1000, 500, 250, 125, 62, 31, 15, 7, 3, 1]  # halved down to 1, then up
    await transport.aclose()


async def test_a_history_page_over_the_limit_asks_for_fewer_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_PAGE_BYTES", 10_000)
    asked: list[tuple[int, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params["limit"])
        before = int(request.url.params.get("before", 41))
        asked.append((limit, request.url.params.get("before")))
        seqs = range(max(1, before - limit), before)
        messages = [
            {
                "message_id": f"m{s}",
                "conversation_id": "c1",
                "seq": s,
                "op_id": None,
                "sender": "mallory",
                "body": "x" * 900,
                "ts_ms": 1,
                "edited_ms": None,
                "deleted": False,
            }
            for s in seqs
        ]
        body = {"messages": messages, "end_of_history": seqs.start == 1}
        return httpx.Response(200, content=orjson.dumps(body))

    transport = make(handler)
    page = await transport.history("c1", None, 200)
    assert [m.seq for m in page.messages] == list(range(35, 41)) and not page.end_of_history
    assert [limit for limit, _ in asked] == [200, 100, 50, 25, 12, 6]
    assert transport.history_limit_cap == 6
    before, pages = page.messages[0].seq, 1
    while not page.end_of_history:
        page = await transport.history("c1", before, 200)
        before, pages = page.messages[0].seq, pages + 1
    assert before == 1 and pages == 7
    assert transport.history_limit_cap is None
    await transport.aclose()


# --- typed returns and request shape --------------------------------------------------------

CONVERSATIONS = {
    "conversations": [
        {
            "id": "c1",
            "title": "Team",
            "members": ["alice", "bob"],
            "last_seq": 4,
            "created_by": "alice",
            "read_seq": 2,
            "future_field": True,
        },
        "not an object",
    ],
    "head": 42,
}


async def test_conversations_are_typed_and_the_dict_shape_is_derived() -> None:
    transport = make(answer(200, CONVERSATIONS))
    snap = await transport.conversation_list()
    assert snap == ConversationList(
        conversations=(
            ConversationSnapshot(
                id="c1",
                title="Team",
                members=("alice", "bob"),
                last_seq=4,
                created_by="alice",
                read_seq=2,
            ),
        ),
        head=42,
    )
    convs, head = await transport.conversations()
    assert head == 42
    assert convs == [
        {
            "id": "c1",
            "title": "Team",
            "members": ["alice", "bob"],
            "last_seq": 4,
            "created_by": "alice",
            "read_seq": 2,
        }
    ]
    await transport.aclose()


@pytest.mark.parametrize(
    "body",
    [
        {"conversations": [{"title": "no id"}], "head": 1},
        {"conversations": [{"id": "c", "members": "bob"}], "head": 1},
        {"conversations": [{"id": "c", "last_seq": "4"}], "head": 1},
        {"conversations": [], "head": "1"},
        {"conversations": {}, "head": 1},
    ],
)
async def test_a_conversation_that_breaks_the_schema_is_a_wire_error(body: Any) -> None:
    transport = make(answer(200, body))
    with pytest.raises(WireError):
        await transport.conversation_list()
    await transport.aclose()


async def test_presence_is_typed_and_bad_entries_are_passed_over() -> None:
    body = {
        "presence": [
            {"user": "bob", "status": "online", "last_seen_ms": 5, "ts_ms": 9},
            {"user": "carol", "status": "offline", "last_seen_ms": None, "ts_ms": 9},
            {"user": 3, "status": "online", "ts_ms": 9},
            {"user": "dave", "status": "online", "ts_ms": "9"},
            "junk",
        ]
    }
    transport = make(answer(200, body))
    assert await transport.presence_list() == (
        PresenceSnapshot(user="bob", status="online", ts_ms=9, last_seen_ms=5),
        PresenceSnapshot(user="carol", status="offline", ts_ms=9, last_seen_ms=None),
    )
    assert (await transport.presence())[0] == {
        "user": "bob",
        "status": "online",
        "ts_ms": 9,
        "last_seen_ms": 5,
    }
    await transport.aclose()


async def test_the_token_goes_in_the_header_only_and_ids_are_one_path_segment() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"messages": [], "end_of_history": True})

    transport = make(handler)
    transport.set_token("secret-token")
    await transport.history("a/b?c#d", 5, 10)
    (request,) = seen
    assert request.headers["authorization"] == "Bearer secret-token"
    assert "secret-token" not in str(request.url)
    assert request.url.raw_path == b"/v1/conversations/a%2Fb%3Fc%23d/messages?limit=10&before=5"
    await transport.aclose()


async def test_login_without_a_token_is_a_wire_error() -> None:
    transport = make(answer(200, {"user": "alice"}))
    with pytest.raises(WireError):
        await transport.login("alice", "pw", "laptop")
    await transport.aclose()
