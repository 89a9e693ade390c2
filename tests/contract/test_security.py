"""Secure by default (G8): secrets never leak, files are private, TLS is verified, the server
authorises every access, and limits answer with clear errors that the engine honours.

- Every logger (root, websockets, httpx, httpcore, uvicorn, starlette, syncengine, stamina)
  at DEBUG through login, live frames, pushes, pulls and refusals: no token or password in any
  record, in exception text, or in the ``--json`` output of the CLI.
- The database, its -wal and -shm, and the token file are 0600 under umask 022.
- TLS (a test CA from trustme, the reference server under uvicorn with TLS): refused by
  default, accepted with ``ca_file``, a hostname mismatch (REST or WebSocket) refused with
  ``TLSVerificationFailed`` and the engine FAILED with nothing lost.
- Authorization: a Hypothesis membership model (random create / add / remove / send
  sequences) against the real server; non-members never see an event via pull, history or
  the live channel, and their actions are refused with 404.
- Rate limit: 100 messages against 5 requests/s, delivered exactly once, 429s honoured.
- Expired tokens: FAILED, nothing lost, a new login resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine import SyncEngine
from syncengine.errors import AuthFailed, TLSVerificationFailed
from syncengine.models import ConnectionState, new_id
from syncengine.server.app import create_app
from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, run_server
from tests.conftest import FAST
from tests.contract.oracle import TIME_FACTOR, Oracle, eventually, scale

pytestmark = [pytest.mark.integration]

LOGGERS = (
    "",
    "websockets",
    "websockets.client",
    "websockets.server",
    "httpx",
    "httpcore",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "starlette",
    "syncengine",
    "stamina",
    "asyncio",
)
SYNCENGINE = Path(sys.executable).with_name("syncengine")


# --- secrets in logs ------------------------------------------------------------------------


class Capture(logging.Handler):
    """Every record, fully formatted (message, arguments, exception, stack)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.__dict__.get("args")))


@contextlib.contextmanager
def every_logger_at_debug() -> Iterator[Capture]:
    capture = Capture()
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    root = logging.getLogger()
    root.addHandler(capture)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def token_of(db: Path) -> str:
    return str(json.loads(Path(f"{db}.token").read_text())["token"])


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(SYNCENGINE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        async with asyncio.timeout(60 * TIME_FACTOR):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.timeout(180)
async def test_no_secret_in_any_log_record_exception_or_cli_output(
    tmp_path: Path, server: Any
) -> None:
    secrets: list[str] = ["alice-password", "bob-password"]
    texts: list[str] = []
    with every_logger_at_debug() as capture:
        async with (
            SyncEngine(tmp_path / "a.db", **FAST) as alice,
            SyncEngine(tmp_path / "b.db", **FAST) as bob,
        ):
            await alice.login(server.url, "alice", "alice-password")
            await bob.login(server.url, "bob", "bob-password")
            secrets += [token_of(alice.db_path), token_of(bob.db_path)]
            cid = (await alice.create_conversation("Secrets", members=["bob"])).id
            for i in range(5):
                await alice.send(cid, f"hello {i}")
            await alice.set_typing(cid, True)
            await eventually(lambda: bob.store.message_count(cid) == 5, what="bob receives")
            await bob.sync_once()
        # Refusals: a wrong password, a forged token (REST and live), their exception texts.
        forged = "forged-" + new_id()
        secrets.append(forged)
        async with SyncEngine(tmp_path / "c.db", **FAST) as carol:
            with pytest.raises(AuthFailed) as bad_password:
                await carol.login(server.url, "alice", "wrong-" + secrets[0])
            texts += [str(bad_password.value), repr(bad_password.value)]
        Path(f"{tmp_path / 'a.db'}.token").write_text(json.dumps({"token": forged}))
        async with SyncEngine(tmp_path / "a.db", **FAST) as refused:
            await eventually(lambda: refused.state is ConnectionState.FAILED, what="FAILED")
            with pytest.raises(AuthFailed) as bad_token:
                await refused.sync_once()
            texts += [str(bad_token.value), repr(bad_token.value), str(await refused.health())]
        # The CLI's --json output and its stderr (only the daemon has a log level: it is
        # checked at DEBUG in test_daemon_contract.py::test_two_daemons_on_one_store).
        db = tmp_path / "cli.db"
        env = {"SYNCENGINE_PASSWORD": "carol-password"}
        secrets.append("carol-password")
        for args in (
            ("login", server.url, "carol"),
            ("status",),
            ("create", "CLI chat"),
            ("conversations",),
            ("outbox",),
            ("sync",),
        ):
            code, out = await run_cli("--db", str(db), "--json", *args, env=env)
            texts.append(out)
            assert code in (0, 1), out
        secrets.append(token_of(db))
        Path(f"{db}.token").write_text(json.dumps({"token": forged}))
        code, out = await run_cli("--db", str(db), "--json", "sync", env=env)
        texts.append(out)
        assert code != 0
    haystack = capture.lines + texts
    assert len(capture.lines) > 100, "the capture saw too little to prove anything"
    assert any("websockets" in line for line in capture.lines), "websockets logged nothing"
    leaks = [(s[:12], line[:200]) for s in secrets for line in haystack if s in line]
    assert not leaks, f"secrets leaked: {leaks[:5]}"
    print(
        f"[no secrets] records={len(capture.lines) // 2} texts={len(texts)} secrets={len(secrets)}"
    )


# --- file modes -----------------------------------------------------------------------------


async def test_store_and_token_files_are_private_under_umask_022(
    tmp_path: Path, server: Any
) -> None:
    old = os.umask(0o022)
    try:
        folder = tmp_path / "fresh" / "nested"
        async with SyncEngine(folder / "a.db", **FAST) as alice:
            await alice.login(server.url, "alice", "pw")
            cid = (await alice.create_conversation("Modes")).id
            await alice.send(cid, "x")
            assert await alice.wait_for_pending(10 * TIME_FACTOR)
            files = [Path(f"{alice.db_path}{s}") for s in ("", "-wal", "-shm", ".token")]
            for path in files:
                assert path.exists(), path
                mode = stat.S_IMODE(path.stat().st_mode)
                assert mode == 0o600, f"{path.name} is {oct(mode)}"
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    finally:
        os.umask(old)


# --- TLS ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_server(data: Path, cert: trustme.LeafCert) -> AsyncIterator[int]:
    """The reference app under uvicorn with TLS on 127.0.0.1, a free port."""
    pem = data / "server.pem"
    data.mkdir(parents=True, exist_ok=True)
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    config = ServerConfig(data_dir=data, **TEST_DEFAULTS)
    uv = uvicorn.Config(
        create_app(config),
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(pem),
        ssl_keyfile=str(pem),
        log_config=None,
        lifespan="on",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = Server(uv)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(20):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        async with asyncio.timeout(20):
            await task


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.timeout(120)
async def test_tls_verified_by_default_on_rest_and_websocket(
    tmp_path: Path, ca: trustme.CA
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    good = ca.issue_cert("127.0.0.1", "localhost")
    wrong = ca.issue_cert("wrong.example")
    async with (
        tls_server(tmp_path / "good", good) as port,
        tls_server(tmp_path / "wrong", wrong) as wrong_port,
    ):
        url = f"https://127.0.0.1:{port}"
        # 1. Refused by default: the test CA is not trusted.
        async with SyncEngine(tmp_path / "default.db", **FAST) as engine:
            with pytest.raises(TLSVerificationFailed):
                await engine.login(url, "alice", "pw")
        # 2. Accepted with ca_file, on REST and on the WebSocket (mode "live").
        db = tmp_path / "a.db"
        async with SyncEngine(db, ca_file=str(ca_file), **FAST) as alice:
            await alice.login(url, "alice", "pw")
            assert await alice.wait_for_state(ConnectionState.LIVE, 10 * TIME_FACTOR)
            assert alice.mode == "live"
            cid = (await alice.create_conversation("TLS")).id
            await alice.send(cid, "over TLS")
            assert await alice.wait_for_pending(10 * TIME_FACTOR)
        # 3. Hostname mismatch on REST: refused even with the right CA.
        async with SyncEngine(tmp_path / "m.db", ca_file=str(ca_file), **FAST) as engine:
            with pytest.raises(TLSVerificationFailed):
                await engine.login(f"https://127.0.0.1:{wrong_port}", "alice", "pw")
        # 4. A logged-in engine that can no longer verify (no CA) ends FAILED, nothing lost.
        async with SyncEngine(db, **FAST) as engine:
            await engine.send(cid, "queued, unverified server")
            await eventually(lambda: engine.state is ConnectionState.FAILED, what="FAILED")
            assert (await engine.health()).pending == 1
        # 5. Hostname mismatch on the WebSocket alone (REST verified, live elsewhere).
        live_url = f"wss://127.0.0.1:{wrong_port}/v1/live"
        async with SyncEngine(db, ca_file=str(ca_file), live_url=live_url, **FAST) as engine:
            await eventually(lambda: engine.state is ConnectionState.FAILED, what="live FAILED")
            assert engine.mode != "live"
        # ... and with everything right again, the queued message goes through.
        async with SyncEngine(db, ca_file=str(ca_file), **FAST) as engine:
            assert await engine.wait_for_pending(10 * TIME_FACTOR)


# --- expired tokens -------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_expired_token_fails_cleanly_and_login_resumes(tmp_path: Path, seed: int) -> None:
    oracle = Oracle("expired token", seed)
    async with run_server(tmp_path / "srv", token_ttl_s=2.0) as srv:
        async with SyncEngine(tmp_path / "a.db", **FAST) as alice:
            await alice.login(srv.url, "alice", "pw")
            cid = (await alice.create_conversation("Expiry")).id
            await oracle.send(alice, cid, "before expiry")
            assert await alice.wait_for_pending(10 * TIME_FACTOR)
            await asyncio.sleep(2.5)
            oracle.fault("token expired")
            await oracle.send(alice, cid, "after expiry")
            await eventually(lambda: alice.state is ConnectionState.FAILED, what="FAILED")
            assert (await alice.health()).pending == 1  # nothing lost
            await alice.login(srv.url, "alice", "pw")
            oracle.healed()
            fig = await oracle.converge(
                lambda: {cid: srv.state.all_messages(cid)},
                {"alice": (alice.store, [cid])},
                timeout=20 * TIME_FACTOR,
            )
            oracle.assert_ok(fig)


# --- rate limit -----------------------------------------------------------------------------


class Recording429s(httpx.AsyncHTTPTransport):
    """The client's own HTTP transport, noting when each request left (past any wait of the
    client's) and, for each 429, when it arrived and the wait it asked for
    (``retry_after_ms``, the server's exact figure; ``Retry-After`` is whole seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, str]] = []
        self.waits: list[tuple[float, float, str]] = []  # (arrival, wait in s, request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        what = f"{request.method} {request.url.path}"
        self.sent.append((time.monotonic(), what))
        response = await super().handle_async_request(request)
        if response.status_code != 429:
            return response
        body = await response.aread()
        wait_ms = json.loads(body).get("retry_after_ms", 1000)
        self.waits.append((time.monotonic(), wait_ms / 1000, what))
        return httpx.Response(429, headers=response.headers, content=body, request=request)


def _budget(what: str) -> str:
    """The server's rate budget a request draws from: pulls have their own."""
    return "pull" if what == "GET /v1/events" else "requests"


@pytest.mark.timeout(180)
async def test_rate_limit_100_messages_delivered_once_429s_honoured(
    tmp_path: Path, seed: int
) -> None:
    from syncengine.transport.rest import RestTransport

    oracle = Oracle("rate limit 5/s", seed)
    n = scale(100, factor=10)
    recorder = Recording429s()
    def transport(url: str) -> RestTransport:
        return RestTransport(
            url,
            timeout_s=FAST["request_timeout_s"],
            heartbeat_interval_s=FAST["heartbeat_interval_s"],
            heartbeat_timeout_s=FAST["heartbeat_timeout_s"],
            http_transport=recorder,
        )

    async with run_server(tmp_path / "srv", rate_per_s=5.0, rate_burst=5) as srv:
        async with SyncEngine(
            tmp_path / "a.db", push_batch=4, transport_factory=transport, **FAST
        ) as alice:
            await alice.login(srv.url, "alice", "pw")
            cid = (await alice.create_conversation("Flood")).id
            for i in range(n):
                await oracle.send(alice, cid, f"flood {i}")
                if i % 4 == 3:
                    await asyncio.sleep(0)  # let the engine push as the app sends
            oracle.healed()
            fig = await oracle.converge(
                lambda: {cid: srv.state.all_messages(cid)},
                {"alice": (alice.store, [cid])},
                timeout=120 * TIME_FACTOR,
                until_acked=lambda: alice.store.health().pending == 0,
            )
    limited = len(recorder.waits)
    fig.extra["requests"] = len(recorder.sent)
    fig.faults, fig.fault_kinds = limited, {"429": limited}
    oracle.assert_ok(fig)
    assert fig.messages == n
    assert limited >= 1, "the flood never hit the limit: the test proves nothing"
    # Honoured: after a 429 the client sends nothing that draws from the same budget until
    # the wait the server asked for has passed (a lower bound the engine enforces: load only
    # lengthens it). 10 ms of slack for the two clock reads.
    early = []
    for arrived, wait, refused in recorder.waits:
        same = [(t, what) for t, what in recorder.sent if _budget(what) == _budget(refused)]
        nxt = next(((t, what) for t, what in same if t > arrived), None)
        if nxt is not None and nxt[0] - arrived < wait - 0.01:
            early.append((refused, nxt[1], round(nxt[0] - arrived, 3), wait))
    assert not early, f"requests sent before the server's retry_after_ms elapsed: {early}"


# --- authorization: a Hypothesis membership model -------------------------------------------

USERS = ("u0", "u1", "u2", "u3")


class AuthWorld:
    """The reference server on a thread, a REST client and a token per user."""

    def __init__(self, data: Path) -> None:
        from syncengine.server.testing import ServerThread

        config = ServerConfig(
            data_dir=data, rate_per_s=100_000.0, rate_burst=100_000, **TEST_DEFAULTS
        )
        self.srv = ServerThread(config).start()
        self.http = httpx.Client(base_url=self.srv.url, timeout=10)
        self.tokens: dict[str, str] = {}
        for user in USERS:
            r = self.http.post("/v1/login", json={"user": user, "password": "pw", "device": "d"})
            r.raise_for_status()
            self.tokens[user] = r.json()["token"]
        self.examples = 0
        self.checks = 0
        self.stack = contextlib.ExitStack()
        self.watches = {u: LiveWatch(self.stack, self.srv.ws_url, self.tokens[u]) for u in USERS}

    def call(self, user: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return self.http.request(method, path, headers=headers, **kwargs)

    def close(self) -> None:
        self.stack.close()
        self.http.close()
        self.srv.stop()


@pytest.fixture(scope="module")
def auth_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthWorld]:
    world = AuthWorld(tmp_path_factory.mktemp("authz"))
    yield world
    world.close()


STEP = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(USERS), st.sets(st.sampled_from(USERS))),
    st.tuples(
        st.sampled_from(["add", "remove"]),
        st.sampled_from(USERS),
        st.integers(0, 2),
        st.sampled_from(USERS),
    ),
    st.tuples(st.just("send"), st.sampled_from(USERS), st.integers(0, 2)),
)


class LiveWatch:
    """One user's live connection, collecting the durable events it is sent."""

    def __init__(self, stack: contextlib.ExitStack, url: str, token: str) -> None:
        from websockets.sync.client import connect

        self.ws = stack.enter_context(connect(url, open_timeout=10))
        self.ws.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(self.ws.recv(timeout=10))
        assert ready["type"] == "ready"
        self.events: list[tuple[str, int]] = []

    def drain(self, convs: set[str], expected: int) -> list[tuple[str, int]]:
        """The durable events of ``convs`` received: wait for ``expected`` of them, then a
        moment more for any extra (an extra is what the test is looking for)."""
        mine = [e for e in self.events if e[0] in convs]
        deadline = time.monotonic() + 10 * TIME_FACTOR
        quiet = False
        while not quiet and time.monotonic() < deadline:
            wait = 0.05 if len(mine) >= expected else 1.0
            try:
                frame = json.loads(self.ws.recv(timeout=wait))
            except TimeoutError:
                quiet = len(mine) >= expected
                continue
            if "pos" in frame and "seq" in frame:
                self.events.append((frame["conversation_id"], frame["seq"]))
                if frame["conversation_id"] in convs:
                    mine.append(self.events[-1])
        return mine


def run_membership_example(world: AuthWorld, steps: list[tuple[Any, ...]]) -> None:
    """Play ``steps`` against the server and against a model; compare what each user sees."""
    head = world.http.get("/v1/health").json()["head"]
    convs: list[str] = []
    members: dict[str, set[str]] = {}
    seq: dict[str, int] = {}
    visible: dict[str, list[tuple[str, int]]] = {u: [] for u in USERS}

    def event(cid: str, audience: set[str]) -> None:
        seq[cid] += 1
        for u in audience:
            visible[u].append((cid, seq[cid]))

    for step in steps:
        kind, actor = step[0], step[1]
        if kind == "create":
            cid = new_id()
            r = world.call(
                actor,
                "POST",
                "/v1/conversations",
                json={"id": cid, "title": "t", "members": sorted(step[2])},
            )
            assert r.status_code == 201, r.text
            convs.append(cid)
            members[cid] = {actor, *step[2]}
            seq[cid] = 0
            event(cid, members[cid])
            continue
        if not convs:
            continue
        cid = convs[step[2] % len(convs)]
        is_member = actor in members[cid]
        if kind == "send":
            op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "b"}
            r = world.call(actor, "POST", "/v1/ops", json={"ops": [op]})
            result = r.json()["results"][0]
            if is_member:
                assert result["status"] == "applied", result
                event(cid, members[cid])
            else:
                assert result["status"] == "rejected" and result["status_code"] == 404
            continue
        target = step[3]
        if kind == "add":
            r = world.call(actor, "POST", f"/v1/conversations/{cid}/members", json={"user": target})
        else:
            r = world.call(actor, "DELETE", f"/v1/conversations/{cid}/members/{target}")
        if not is_member:
            assert r.status_code == 404, (step, r.status_code, r.text)
            continue
        assert r.status_code == 200, (step, r.text)
        if kind == "add" and target not in members[cid]:
            members[cid].add(target)
            event(cid, members[cid])
        elif kind == "remove" and target in members[cid]:
            event(cid, set(members[cid]))  # the removed user sees their removal, no more
            members[cid].discard(target)
    for user in USERS:
        # pull: exactly the model's events, in order
        r = world.call(user, "GET", "/v1/events", params={"since": head, "limit": 1000})
        pulled = [
            (e["conversation_id"], e["seq"])
            for e in r.json()["events"]
            if e["conversation_id"] in members
        ]
        assert pulled == visible[user], (user, steps)
        # live: the same events (a non-member is sent nothing of the conversation)
        live = world.watches[user].drain(set(members), len(visible[user]))
        assert live == visible[user], (user, "live", steps)
        # history: members only; non-members get 404 (indistinguishable from "no such")
        for cid in convs:
            r = world.call(user, "GET", f"/v1/conversations/{cid}/messages")
            assert r.status_code == (200 if user in members[cid] else 404), (user, cid)
            world.checks += 1


@pytest.mark.timeout(3600 if scale(1) > 1 else 120)
def test_authorization_matrix_from_a_membership_model(auth_world: AuthWorld) -> None:
    @settings(
        max_examples=scale(25),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(steps=st.lists(STEP, min_size=1, max_size=12))
    def check(steps: list[tuple[Any, ...]]) -> None:
        auth_world.examples += 1
        run_membership_example(auth_world, steps)

    check()
    print(f"[authz model] examples={auth_world.examples} history checks={auth_world.checks}")
