"""End-to-end scenarios that catch realistic bugs of the engine's driver (issue 19).

Each scenario drives the public :class:`syncengine.SyncEngine` against the reference server on
127.0.0.1, made to misbehave (if at all) by a small ASGI wrapper around the real app, never by
patching the engine. Each fails on one small, realistic mutation of the delivery code that the
rest of the suite lets through:

- a resync from a cursor *ahead* of the server's log (a server restored from a backup) saves
  the server's head as the cursor: nothing is lost afterwards, exactly one ``Discontinuity``;
- a push answered with a bare ``500`` (or 502, 504, 408) is retried: the message is delivered
  exactly once and never becomes FAILED;
- the REST transport maps every HTTP status to the right error class (the table);
- a server that refuses a whole push batch (``413``) gets every acceptable message promptly
  (long before the 60 s SENDING lease) and only the culprit is FAILED;
- a live frame that never arrives is recovered by an immediate pull on the seq gap, long
  before the safety-net pull;
- a catch-up of 300 messages in pages of 100 pulls each page once and no more.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from syncengine import (
    AuthFailed,
    ConnectionState,
    CursorExpired,
    Discontinuity,
    MessageFailed,
    MessageState,
    RateLimited,
    Rejected,
    SyncEngine,
    TransportError,
    new_id,
)
from syncengine.server.testing import run_server
from tests.conftest import FAST
from tests.scenarios.asgi_wrap import (
    CountRequests,
    DropLiveFrame,
    PlainStatus,
    serve_asgi,
    wrapped_server,
)

pytestmark = [pytest.mark.integration]


def premise(ok: object, what: str) -> None:
    """A setup check: it raises RuntimeError, never the AssertionError a scenario expects."""
    if not ok:
        raise RuntimeError(f"setup failed: {what}")


async def until(
    predicate: Callable[[], Any], timeout: float, what: str, *, setup: bool = False
) -> float:
    """Poll ``predicate`` (sync or async) until true; returns the seconds it took. On timeout,
    AssertionError (RuntimeError for a ``setup`` step)."""
    start = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise (RuntimeError if setup else AssertionError)(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.02)


async def stored(engine: SyncEngine, cid: str) -> list[tuple[str | None, int | None, str]]:
    """(server id, seq, body) of every message in the engine's store, oldest first."""
    page = await engine.messages(cid, limit=10_000)
    return [(m.id, m.seq, m.body) for m in page.messages]


def server_view(messages: list[dict[str, Any]]) -> list[tuple[str | None, int | None, str]]:
    return [(m["message_id"], m["seq"], m["body"]) for m in messages]


# --- resync from a cursor ahead of the server's log -----------------------------------------


def _copy_db(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.glob("server.sqlite3*"):
        old.unlink()
    for f in src.glob("server.sqlite3*"):
        shutil.copy2(f, dst / f.name)


async def _restore_scenario(
    tmp_path: Path, *, lost_in_same_conversation: bool
) -> tuple[list[tuple[str | None, int | None, str]], list[tuple[str | None, int | None, str]], int]:
    """alice and bob share conversation A (5 messages), then the server's backup is taken;
    10 more messages follow (in A, or in a new conversation B), then the server is restored
    from the backup. bob resyncs, goes offline while alice sends 60 into A, and restarts.

    Returns the server's messages of A, bob's copy of A, and the Discontinuity count."""
    data = tmp_path / "srv"
    backup = tmp_path / "backup"
    discontinuities: list[Discontinuity] = []
    async with run_server(data) as srv:
        alice = SyncEngine(tmp_path / "alice.db", **FAST)
        bob = SyncEngine(tmp_path / "bob.db", **FAST)
        bob.on(Discontinuity, discontinuities.append)
        async with alice:
            await alice.login(srv.url, "alice", "alice-pw")
            cid = (await alice.create_conversation("Restore", members=["bob"])).id
            async with bob:
                await bob.login(srv.url, "bob", "bob-pw")
                for i in range(5):
                    await alice.send(cid, f"kept {i}")
                premise(await alice.wait_for_pending(20), "alice delivered 5")
                await until(lambda: bob.store.message_count(cid) == 5, 20, "5", setup=True)

                await srv.stop()  # the backup is taken here
                _copy_db(data, backup)
                await srv.start()
                lost_in = cid
                if not lost_in_same_conversation:
                    lost_in = (await alice.create_conversation("Lost", members=["bob"])).id
                for i in range(10):
                    await alice.send(lost_in, f"lost by the restore {i}")
                premise(await alice.wait_for_pending(20), "alice delivered 10")
                await until(lambda: bob.store.message_count() == 15, 20, "15", setup=True)
                await until(
                    lambda: bob.store.cursor() == srv.state.head, 20, "bob's cursor", setup=True
                )
                bob_cursor = bob.store.cursor()

                await srv.stop()  # the server is restored from the backup
                _copy_db(backup, data)
                await srv.start()
                premise(srv.state.head < bob_cursor, "bob's cursor is ahead of the log")
                await until(lambda: discontinuities, 30, "bob resynced")
                assert await bob.wait_for_state(ConnectionState.LIVE, 20)
            # bob is offline; alice sends 60 more into A, past bob's old cursor
            for i in range(60):
                await alice.send(cid, f"after the restore {i}")
            assert await alice.wait_for_pending(15), (
                f"alice could not deliver after the restore (state {alice.state.value})"
            )
            truth = server_view(srv.state.all_messages(cid))
            assert len(truth) == 65
            assert srv.state.head > bob_cursor

            bob = SyncEngine(tmp_path / "bob.db", **FAST)
            bob.on(Discontinuity, discontinuities.append)
            async with bob:

                async def has_all() -> bool:
                    ids = {m[0] for m in await stored(bob, cid)}
                    return all(m[0] in ids for m in truth)

                try:
                    await until(has_all, 30, "bob holds every message of the server")
                except AssertionError:
                    have = {m[0] for m in await stored(bob, cid)}
                    missing = [m for m in truth if m[0] not in have]
                    raise AssertionError(
                        f"bob lacks {len(missing)} of {len(truth)} server messages after his "
                        f"restart (first: {missing[:1]})"
                    ) from None
                return truth, await stored(bob, cid), len(discontinuities)
    raise AssertionError("unreachable")


@pytest.mark.timeout(120)
async def test_resync_from_a_cursor_ahead_of_a_restored_server_loses_nothing(
    tmp_path: Path,
) -> None:
    """The server is restored from a backup older than bob's cursor (the events lost are
    another conversation's): bob resyncs with one Discontinuity, and after an offline spell
    holds every message of the server, each once, in the server's order."""
    truth, bobs, discontinuities = await _restore_scenario(
        tmp_path, lost_in_same_conversation=False
    )
    assert bobs == truth, "bob's copy differs from the server's (order, extra or twice)"
    assert discontinuities == 1


@pytest.mark.timeout(120)
async def test_resync_after_a_restore_that_lost_messages_of_the_conversation(
    tmp_path: Path,
) -> None:
    """As above, but the restore loses 10 messages of the conversation itself, so the server
    hands their seqs to new messages: alice keeps sending, bob ends with the server's view."""
    truth, bobs, discontinuities = await _restore_scenario(tmp_path, lost_in_same_conversation=True)
    assert bobs == truth, "bob's copy differs from the server's (lost messages kept?)"
    assert discontinuities == 1


# --- a plain 5xx (or 408) on a push is transient ---------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("status", "after"),
    [(500, False), (502, False), (504, False), (408, False), (500, True)],
    ids=["500", "502", "504", "408", "500-after-commit"],
)
async def test_plain_error_status_on_a_push_is_retried_and_delivered_once(
    tmp_path: Path, status: int, after: bool
) -> None:
    """The push of one message gets a bare ``status`` (text body, no JSON): the message is
    still delivered exactly once and never FAILED. (The push carries that message alone: a
    refused batch of several is split and pushed again, which would hide a wrong mapping.)"""
    wrapper: list[PlainStatus] = []

    def wrap(app: Any) -> PlainStatus:
        wrapper.append(PlainStatus(app, [], after=after))
        return wrapper[0]

    failed: list[MessageFailed] = []
    async with wrapped_server(tmp_path, wrap) as srv:
        alice = SyncEngine(tmp_path / "alice.db", **FAST)
        alice.on(MessageFailed, failed.append)
        async with alice:
            await alice.login(srv.url, "alice", "alice-pw")
            assert await alice.wait_for_state(ConnectionState.LIVE, 20)
            cid = (await alice.create_conversation("Plain", members=["bob"])).id
            assert await alice.wait_for_pending(15)
            wrapper[0].statuses.append(status)  # the next push gets the bare status
            sent = await alice.send(cid, "exactly once")
            await until(lambda: wrapper[0].answered == [status], 10, "the bare status")
            assert await alice.wait_for_pending(15), "the message was not delivered"
            health = await alice.health()
            assert failed == [] and health.failed == 0, f"FAILED after a bare {status}: {failed}"
            on_server = srv.storage.all_messages(cid)
            assert [(m["op_id"], m["body"]) for m in on_server] == [(sent.op_id, "exactly once")]
            [mine] = (await alice.messages(cid)).messages
            assert mine.state is MessageState.SENT and mine.op_id == sent.op_id


# --- the status table of the REST transport ---------------------------------------------------

#: status -> the error the REST transport must raise (TransportError: transient, retried).
STATUS_TABLE: dict[int, type[Exception]] = {
    400: Rejected,
    401: AuthFailed,
    403: Rejected,
    404: Rejected,
    408: TransportError,
    409: Rejected,
    410: CursorExpired,
    413: Rejected,
    422: Rejected,
    429: RateLimited,
    500: TransportError,
    502: TransportError,
    503: TransportError,
    504: TransportError,
}


@pytest.fixture
async def status_server() -> AsyncIterator[str]:
    """A loopback server whose ``POST /s/{status}/v1/ops`` answers ``status``: a transport
    with the base URL ``http://127.0.0.1:PORT/s/{status}`` gets that status for every push.
    5xx and 408 come with a plain-text body, the others with the protocol's JSON error."""

    async def answer(request: Request) -> Response:
        status = int(request.path_params["status"])
        headers = {"Retry-After": "7"} if status == 429 else {}
        if status >= 500 or status == 408:
            return Response(b"upstream trouble", status, headers, media_type="text/plain")
        body = orjson.dumps({"code": f"code_{status}", "reason": f"reason {status}"})
        return Response(body, status, headers, media_type="application/json")

    app = Starlette(routes=[Route("/s/{status}/v1/ops", answer, methods=["POST"])])
    async with serve_asgi(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", sorted(STATUS_TABLE))
async def test_rest_status_maps_to_its_error(status_server: str, status: int) -> None:
    """Every status the protocol knows becomes the right error of :mod:`syncengine.errors`:
    5xx and 408 transient (retried), 401 credentials, 410 resync, 429 with its Retry-After,
    the other 4xx a permanent rejection carrying the server's code and the status."""
    # Imported here: if the transport moves, only this table fails, not the whole file.
    from syncengine.transport.rest import RestTransport

    transport = RestTransport(f"{status_server}/s/{status}", timeout_s=5)
    transport.set_token("t0ken")
    try:
        with pytest.raises(Exception) as caught:
            await transport.push([{"op_id": "x", "kind": "send"}])
    finally:
        await transport.aclose()
    error = caught.value
    expected = STATUS_TABLE[status]
    assert isinstance(error, expected), f"{status} -> {type(error).__name__}, not {expected}"
    if expected is TransportError:
        assert not isinstance(error, Rejected | AuthFailed | CursorExpired)
    if expected is Rejected:
        assert isinstance(error, Rejected)
        assert error.status == status and error.code == f"code_{status}"
        assert not isinstance(error, TransportError)
    if expected is RateLimited:
        assert isinstance(error, RateLimited) and error.retry_after == 7.0


# --- a whole push batch refused (413) ---------------------------------------------------------


@pytest.mark.timeout(60)
async def test_batch_refused_whole_delivers_the_rest_promptly_and_fails_only_the_culprit(
    tmp_path: Path,
) -> None:
    """The server's body limit (8 KB) refuses any push carrying the 10,000-character culprit
    with ``413`` for the whole batch. The engine isolates it: the 20 other messages arrive in
    their order within seconds (not after the 60 s lease), only the culprit is FAILED."""
    failed: list[MessageFailed] = []
    async with run_server(tmp_path / "srv", max_body_bytes=8192) as srv:
        # Logged in but not syncing while the work is queued: the next start pushes it all
        # as one batch.
        async with SyncEngine(tmp_path / "alice.db", **FAST, connect=False) as offline:
            await offline.login(srv.url, "alice", "alice-pw")
            cid = (await offline.create_conversation("Batch", members=["bob"])).id
            bodies = [f"small {i}" for i in range(20)]
            culprit_at = 7
            ops = []
            for i, body in enumerate(bodies):
                if i == culprit_at:
                    ops.append((await offline.send(cid, "C" * 10_000)).op_id)
                ops.append((await offline.send(cid, body)).op_id)
            culprit = ops[culprit_at]
        alice = SyncEngine(tmp_path / "alice.db", **FAST)
        alice.on(MessageFailed, failed.append)
        async with alice:

            async def settled() -> bool:
                h = await alice.health()
                return (h.pending, h.sending, h.failed) == (0, 0, 1)

            try:
                took = await until(settled, 10, "the outbox settled: nothing pending or sending")
            except AssertionError:
                h = await alice.health()
                raise AssertionError(
                    f"after 10 s: {h.pending} pending, {h.sending} sending, {h.failed} failed; "
                    f"{len(srv.state.all_messages(cid))} of {len(bodies)} on the server"
                ) from None
            assert [m["body"] for m in srv.state.all_messages(cid)] == bodies
            assert [f.op_id for f in failed] == [culprit]
            assert took < 10


# --- a lost live frame ------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_lost_live_frame_is_recovered_by_the_gap_not_the_safety_pull(
    tmp_path: Path,
) -> None:
    """The live frame of one message never reaches bob. The next message shows bob a seq gap:
    he pulls at once and holds both within 3 s, with the safety-net pull 60 s away."""
    wrapper: list[DropLiveFrame] = []

    def wrap(app: Any) -> DropLiveFrame:
        wrapper.append(DropLiveFrame(app, "LOST-FRAME"))
        return wrapper[0]

    async with wrapped_server(tmp_path, wrap) as srv:
        options = {**FAST, "safety_pull_s": 60.0}
        alice = SyncEngine(tmp_path / "alice.db", **options)
        bob = SyncEngine(tmp_path / "bob.db", **options)
        async with alice, bob:
            await alice.login(srv.url, "alice", "alice-pw")
            await bob.login(srv.url, "bob", "bob-pw")
            cid = (await alice.create_conversation("Gap", members=["bob"])).id
            await alice.send(cid, "first")
            await until(lambda: bob.store.message_count(cid) == 1, 20, "bob has the first")
            assert await bob.wait_for_state(ConnectionState.LIVE, 20)

            await alice.send(cid, "LOST-FRAME")
            await until(lambda: wrapper[0].dropped >= 1, 10, "the frame was dropped")
            assert bob.store.message_count(cid) == 1
            await alice.send(cid, "third")
            took = await until(
                lambda: bob.store.message_count(cid) == 3, 30, "bob recovered the lost frame"
            )
            assert took < 3.0, f"the lost frame came back after {took:.1f}s (safety pull?)"
            assert [m[2] for m in await stored(bob, cid)] == ["first", "LOST-FRAME", "third"]


# --- request counts of a catch-up --------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_catch_up_of_300_messages_pulls_each_page_once(tmp_path: Path) -> None:
    """bob's device, offline while 300 messages arrive in a conversation it knows, catches up
    in pages of 100: one request per page, no page pulled twice, and no extra pull afterwards
    (the next live message is not taken for a gap)."""
    counter: list[CountRequests] = []

    def wrap(app: Any) -> CountRequests:
        counter.append(CountRequests(app))
        return counter[0]

    async with (
        wrapped_server(tmp_path, wrap) as srv,
        httpx.AsyncClient(base_url=srv.url) as http,
    ):
        r = await http.post(
            "/v1/login", json={"user": "alice", "password": "alice-pw", "device": "d"}
        )
        alice = {"Authorization": f"Bearer {r.json()['token']}"}
        cid = new_id()
        r = await http.post(
            "/v1/conversations",
            json={"id": cid, "title": "Counts", "members": ["bob"]},
            headers=alice,
        )
        assert r.status_code == 201, r.text

        async def send(*bodies: str) -> None:
            ops = [
                {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": body}
                for body in bodies
            ]
            r = await http.post("/v1/ops", json={"ops": ops}, headers=alice)
            assert r.status_code == 200, r.text

        await send("known")
        options = {**FAST, "page_size": 100}
        async with SyncEngine(tmp_path / "bob.db", **options) as bob:
            await bob.login(srv.url, "bob", "bob-pw")
            await until(lambda: bob.store.message_count(cid) == 1, 20, "bob knows the chat")
            await until(lambda: bob.store.cursor() == srv.storage.head, 20, "bob's cursor")
            cursor = bob.store.cursor()
        for batch in range(3):
            await send(*(f"m {batch * 100 + i}" for i in range(100)))
        pages = math.ceil((srv.storage.head - cursor) / 100)
        assert pages == 3

        del counter[0].requests[:]
        async with SyncEngine(tmp_path / "bob.db", **options) as bob:
            assert await bob.wait_for_state(ConnectionState.LIVE, 30)
            assert bob.store.message_count(cid) == 301
            await send("live")  # arrives live: it must not look like a gap
            await until(lambda: bob.store.message_count(cid) == 302, 10, "the live message")
            await until(lambda: bob.store.cursor() == srv.storage.head, 10, "bob's cursor")
            pulls = [
                parse_qs(q) for m, p, q in counter[0].requests if (m, p) == ("GET", "/v1/events")
            ]
        since = [int(q["since"][0]) for q in pulls]
        assert len(set(since)) == len(since), f"a page was pulled twice: since={since}"
        assert len(pulls) == pages, f"{len(pulls)} pulls for {pages} pages: since={since}"
