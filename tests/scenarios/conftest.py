"""Shared helpers of the end-to-end scenarios (issue 12's cases live in ``test_*.py`` here).

Everything runs against public surfaces only: :class:`syncengine.SyncEngine`, the CLI and the
daemon in subprocesses, and the reference server over HTTP and WebSocket, on 127.0.0.1.
Helpers and fixtures of this file are prefixed ``scn_`` / ``Scn`` so that other scenario
files (other issues) can add their own beside them without clashes.

- :class:`ScnMiddlebox`: an HTTP-aware TCP proxy that breaks the live channel the way
  middleboxes do (upgrade answered 5xx, upgrade never answered, upgrade accepted then silent),
  answers chosen REST paths with 503, drops chosen live frames, and runs a hook just before a
  chosen request reaches the server (to make a race happen at a known moment).
- :class:`ScnClient`: another device of a user, talking to the server over plain HTTP.
- :func:`scn_until` / :func:`scn_wait`: poll a condition against a deadline.
- :func:`scn_store_view` / :func:`scn_server_view`: a conversation as (id, seq, sender, body,
  deleted) rows, from a store and from the server, to compare them exactly.
- :func:`scn_cli`: ``syncengine --db DB ...`` in a subprocess; :class:`ScnDaemon`: the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine import ConnectionState, SyncEngine, new_id
from tests.conftest import FAST

SCN_SYNCENGINE = Path(sys.executable).with_name("syncengine")

#: The bound the issue sets for "pushes and pulls over REST" when the live channel is broken.
SCN_FALLBACK_S = 10.0
#: How long a scenario waits for stores to equal the server once the fault is over.
SCN_CONVERGE_S = 15.0


# --- waiting -------------------------------------------------------------------------------


async def scn_wait(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05
) -> bool:
    """Poll ``predicate()`` (sync or async) until true or ``timeout`` s; returns the last
    truth value as a bool."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def scn_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    detail: Callable[[], Any] | None = None,
) -> None:
    """Fail with ``what`` (and ``detail()``) unless ``predicate`` holds within ``timeout`` s."""
    if not await scn_wait(predicate, timeout):
        extra = f"; {detail()}" if detail is not None else ""
        raise AssertionError(f"not within {timeout:g} s: {what}{extra}")


# --- views of a conversation --------------------------------------------------------------


Row = tuple[Any, ...]


def scn_store_view(engine: SyncEngine, cid: str) -> list[Row]:
    """A conversation in an engine's store: (id, seq, sender, body, deleted), seq order,
    local echoes (seq None) last."""
    return [
        (m.id, m.seq, m.sender, m.body, m.deleted)
        for m in engine.store.messages(cid, limit=1_000_000)
    ]


def scn_server_view(messages: Iterable[Mapping[str, Any]]) -> list[Row]:
    """The same rows from the server's messages (``srv.state.all_messages`` or history)."""
    return [
        (m["message_id"], m["seq"], m["sender"], m["body"], bool(m["deleted"])) for m in messages
    ]


def scn_diff(store: list[Row], server: list[Row]) -> str:
    """A short description of how two views differ ("" when equal)."""
    if store == server:
        return ""
    s_ids = {r[0]: r for r in store}
    v_ids = {r[0]: r for r in server}
    missing = [v_ids[i][1] for i in v_ids if i not in s_ids]
    extra = [(r[1], r[3][:30]) for i, r in s_ids.items() if i not in v_ids]
    changed = [
        (v_ids[i][1], s_ids[i][3:], v_ids[i][3:])
        for i in v_ids
        if i in s_ids and s_ids[i] != v_ids[i]
    ]
    return (
        f"store {len(store)} rows, server {len(server)}; missing seqs {missing[:10]}; "
        f"extra {extra[:5]}; differing (seq, store, server) {changed[:5]}"
    )


# --- another device over HTTP -------------------------------------------------------------


class ScnClient:
    """One device of a user, talking to the server over HTTP (no store): the other side of a
    scenario, or a second device of the engine's user.

    Use ``async with ScnClient(url, "alice") as alice:``.
    """

    def __init__(self, url: str, user: str, *, device: str = "scn", password: str | None = None):
        self.url = url
        self.user = user
        self.device = device
        self.password = password or f"{user}-password"
        self.http = httpx.AsyncClient(base_url=url, timeout=10.0)
        self.token = ""

    async def __aenter__(self) -> ScnClient:
        await self.login()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def login(self) -> None:
        r = await self.http.post(
            "/v1/login",
            json={"user": self.user, "password": self.password, "device": self.device},
        )
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    async def create(self, title: str, members: list[str]) -> str:
        cid = new_id()
        r = await self.http.post(
            "/v1/conversations", json={"id": cid, "title": title, "members": members}
        )
        assert r.status_code == 201, r.text
        return cid

    async def ops(self, *ops: dict[str, Any]) -> list[dict[str, Any]]:
        r = await self.http.post("/v1/ops", json={"ops": list(ops)})
        assert r.status_code == 200, r.text
        return list(r.json()["results"])

    async def send(self, cid: str, body: str, op_id: str | None = None) -> dict[str, Any]:
        (res,) = await self.ops(
            {"op_id": op_id or new_id(), "kind": "send", "conversation_id": cid, "body": body}
        )
        assert res["status"] == "applied", res
        return res

    async def send_many(self, cid: str, bodies: list[str]) -> None:
        for start in range(0, len(bodies), 500):
            results = await self.ops(
                *(
                    {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": b}
                    for b in bodies[start : start + 500]
                )
            )
            assert all(r["status"] == "applied" for r in results), results[:3]

    async def edit(self, cid: str, message_id: str, body: str) -> dict[str, Any]:
        (res,) = await self.ops(
            {
                "op_id": new_id(),
                "kind": "edit",
                "conversation_id": cid,
                "message_id": message_id,
                "body": body,
            }
        )
        assert res["status"] == "applied", res
        return res

    async def delete(self, cid: str, message_id: str) -> dict[str, Any]:
        (res,) = await self.ops(
            {"op_id": new_id(), "kind": "delete", "conversation_id": cid, "message_id": message_id}
        )
        assert res["status"] == "applied", res
        return res

    async def mark_read(self, cid: str, seq: int) -> dict[str, Any]:
        (res,) = await self.ops(
            {"op_id": new_id(), "kind": "mark_read", "conversation_id": cid, "seq": seq}
        )
        assert res["status"] == "applied", res
        return res

    async def rename(self, cid: str, title: str) -> None:
        r = await self.http.patch(f"/v1/conversations/{cid}", json={"title": title})
        assert r.status_code == 200, r.text

    async def add_member(self, cid: str, user: str) -> None:
        r = await self.http.post(f"/v1/conversations/{cid}/members", json={"user": user})
        assert r.status_code == 200, r.text

    async def remove_member(self, cid: str, user: str) -> None:
        r = await self.http.delete(f"/v1/conversations/{cid}/members/{user}")
        assert r.status_code == 200, r.text

    async def conversations(self) -> dict[str, dict[str, Any]]:
        """The server's view of this user's conversations, by id."""
        r = await self.http.get("/v1/conversations")
        assert r.status_code == 200, r.text
        return {c["id"]: c for c in r.json()["conversations"]}

    async def history(self, cid: str) -> list[dict[str, Any]]:
        """Every message of ``cid`` as the server's history shows it to this user."""
        out: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            params: dict[str, Any] = {"limit": 200}
            if before is not None:
                params["before"] = before
            r = await self.http.get(f"/v1/conversations/{cid}/messages", params=params)
            assert r.status_code == 200, r.text
            doc = r.json()
            out[:0] = doc["messages"]
            if doc["end_of_history"] or not doc["messages"]:
                return out
            before = doc["messages"][0]["seq"]


# --- the middlebox -------------------------------------------------------------------------

_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+) HTTP/1\.[01]\r\n")


class ScnMiddlebox:
    """An HTTP-aware TCP proxy on 127.0.0.1 (a free port) in front of the reference server.

    Attributes (switch them while it runs):
        live: what happens to a WebSocket upgrade (a request for ``/v1/live``):
            ``"pass"`` forwards it; ``"status:502"`` (any code) answers that status and
            closes; ``"hang"`` accepts the TCP connection, reads the request and never
            answers; ``"silent"`` forwards the upgrade and the server's ``101``, then forwards
            nothing more either way while keeping both sockets open.
        rest_fail: path prefixes answered ``503`` (then the connection is closed).
        drop_frames: server-to-client live frames whose payload contains one of these bytes
            are dropped (the connection stays up: a live event is lost, as a seq gap).
        live_attempts: how many live upgrades were seen.
        requests: every REST request line seen, as ``"METHOD /path"``.

    Hooks: :meth:`before` runs an async callable (once) just before the first request whose
    request line contains a pattern is forwarded.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.live = "pass"
        self.rest_fail: list[str] = []
        self.drop_frames: list[bytes] = []
        self.dropped = 0
        self.live_attempts = 0
        self.requests: list[str] = []
        self._hooks: list[tuple[bytes, Callable[[], Awaitable[None]]]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._live_writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScnMiddlebox:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    def before(self, pattern: str, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` once, before the first request whose request line contains
        ``pattern`` is forwarded to the server."""
        self._hooks.append((pattern.encode(), hook))

    def heal(self) -> None:
        """Forward everything again; live connections held hung or silent are closed (the
        path changed), REST connections are kept."""
        self.live = "pass"
        self.rest_fail = []
        self.drop_frames = []
        for w in list(self._live_writers):
            w.transport.abort()
        self._live_writers.clear()

    def cut(self) -> None:
        """Close every open connection."""
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    # --- per connection --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            head = await self._read_head(reader)
            if head is None:
                return
            m = _REQUEST_LINE.match(head)
            path = m.group(2).decode() if m else ""
            if path.startswith("/v1/live"):
                self.live_attempts += 1
                if self.live in ("hang", "silent"):
                    self._live_writers.add(writer)
                await self._live(head, reader, writer)
            else:
                await self._rest(head, reader, writer)
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Stopped by __aexit__: end quietly (asyncio logs a connection callback that
            # ends cancelled as an error).
            pass
        finally:
            self._writers.discard(writer)
            self._live_writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                return None
            buf += chunk
        return buf

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.add(w)
        return r, w

    async def _check_request(self, data: bytes, writer: asyncio.StreamWriter) -> bool:
        """Run hooks and failures for the request lines in ``data``; False when answered."""
        for m in _REQUEST_LINE.finditer(data):
            method, path = m.group(1).decode(), m.group(2).decode()
            self.requests.append(f"{method} {path}")
            for pattern, hook in list(self._hooks):
                if pattern in m.group(0):
                    self._hooks.remove((pattern, hook))
                    await hook()
            if any(path.startswith(p) for p in self.rest_fail):
                body = b'{"code":"unavailable","reason":"middlebox"}'
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.drain()
                return False
        return True

    async def _rest(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not await self._check_request(head, writer):
            return
        up_r, up_w = await self._upstream()
        up_w.write(head)

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                if not await self._check_request(data, writer):
                    return
                up_w.write(data)
                await up_w.drain()

        async def server_to_client() -> None:
            while data := await up_r.read(65536):
                writer.write(data)
                await writer.drain()

        try:
            await _first_of(client_to_server(), server_to_client())
        finally:
            self._writers.discard(up_w)
            up_w.transport.abort()

    async def _live(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        mode = self.live
        if mode.startswith("status:"):
            code = int(mode.split(":", 1)[1])
            writer.write(
                b"HTTP/1.1 %d Middlebox\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % code
            )
            await writer.drain()
            return
        if mode == "hang":
            while await reader.read(65536):  # read and ignore, never answer
                pass
            return
        up_r, up_w = await self._upstream()
        try:
            await self._live_upstream(mode, head, reader, writer, up_r, up_w)
        finally:
            self._writers.discard(up_w)
            up_w.transport.abort()

    async def _live_upstream(
        self,
        mode: str,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        up_w.write(head)
        await up_w.drain()
        response = await self._read_head(up_r)
        if response is None:
            return
        writer.write(response)
        await writer.drain()
        if mode == "silent":
            while await reader.read(65536):  # the link looks open; nothing goes through
                pass
            return

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                up_w.write(data)
                await up_w.drain()

        async def server_to_client() -> None:
            buf = response.split(b"\r\n\r\n", 1)[1]
            while True:
                buf = await self._forward_frames(buf, writer)
                data = await up_r.read(65536)
                if not data:
                    return
                buf += data

        await _first_of(client_to_server(), server_to_client())

    async def _forward_frames(self, buf: bytes, writer: asyncio.StreamWriter) -> bytes:
        """Forward the complete server frames in ``buf`` (less the dropped ones); returns the
        incomplete tail."""
        out = bytearray()
        while len(buf) >= 2:
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = int.from_bytes(buf[2:4], "big")
                offset = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = int.from_bytes(buf[2:10], "big")
                offset = 10
            if buf[1] & 0x80:
                offset += 4
            if len(buf) < offset + length:
                break
            frame, buf = buf[: offset + length], buf[offset + length :]
            payload = frame[offset:]
            if any(marker in payload for marker in self.drop_frames):
                self.dropped += 1
                continue
            out += frame
        if out:
            writer.write(bytes(out))
            await writer.drain()
        return buf


async def _first_of(*coros: Awaitable[None]) -> None:
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


# --- engines, CLI, daemon ------------------------------------------------------------------

ScnEngineFactory = Callable[..., Awaitable[SyncEngine]]


@pytest.fixture
async def scn_engines(tmp_path: Path) -> AsyncIterator[ScnEngineFactory]:
    """``await scn_engines(url, "bob", db=..., device=..., wait_live=True, **options)``: an
    open engine logged in at ``url`` (FAST settings); closed at the end of the test."""
    made: list[SyncEngine] = []

    async def make(
        url: str,
        user: str,
        *,
        db: Path | None = None,
        device: str | None = None,
        wait_live: bool = True,
        login: bool = True,
        **options: Any,
    ) -> SyncEngine:
        engine = SyncEngine(db or tmp_path / f"{user}.db", **{**FAST, **options})
        await engine.open()
        made.append(engine)
        if login:
            await engine.login(url, user, f"{user}-password", device=device)
            if wait_live:
                assert await engine.wait_for_state(ConnectionState.LIVE, timeout=10)
        return engine

    yield make
    for engine in made:
        with contextlib.suppress(Exception):
            await engine.close()


async def scn_cli(
    db: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, str, str]:
    """``syncengine --db DB ARGS...`` in a subprocess; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(SCN_SYNCENGINE),
        "--db",
        str(db),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def scn_status(db: Path) -> dict[str, Any]:
    """``syncengine --db DB --json status`` as a dict."""
    code, out, err = await scn_cli(db, "--json", "status")
    assert code == 0, err
    return dict(json.loads(out))


async def scn_cli_login(db: Path, url: str, user: str) -> None:
    code, _out, err = await scn_cli(
        db, "login", url, user, env={"SYNCENGINE_PASSWORD": f"{user}-password"}
    )
    assert code == 0, err


class ScnDaemon:
    """``syncengine --db DB daemon`` in a subprocess, its log collected."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> ScnDaemon:
        self.proc = await asyncio.create_subprocess_exec(
            str(SCN_SYNCENGINE),
            "--db",
            str(self.db),
            "daemon",
            "--log-level",
            "info",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    @property
    def started(self) -> bool:
        return any("daemon started" in line for line in self.lines)

    async def wait_live(self, timeout: float = 20.0) -> None:
        """Wait until this daemon has started and ``status`` says ``live``."""

        async def live() -> bool:
            if self.exited:
                raise AssertionError(f"the daemon exited: {self.lines[-5:]}")
            return self.started and (await scn_status(self.db))["state"] == "live"

        await scn_until(live, timeout, "the daemon is live", lambda: self.lines[-3:])

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
        return self.proc.returncode


@pytest.fixture
async def scn_daemons() -> AsyncIterator[Callable[[Path], Awaitable[ScnDaemon]]]:
    """``await scn_daemons(db)``: a started daemon, stopped at the end of the test."""
    started: list[ScnDaemon] = []

    async def start(db: Path) -> ScnDaemon:
        d = await ScnDaemon(db).start()
        started.append(d)
        return d

    yield start
    for d in started:
        await d.stop()


def scn_field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, else ``getattr(obj, name)`` (health values may be either)."""
    if isinstance(obj, Mapping):
        if name not in obj:
            raise AssertionError(f"no {name!r} key in {sorted(obj)}")
        return obj[name]
    if not hasattr(obj, name):
        raise AssertionError(f"{type(obj).__name__} has no {name!r}: {obj!r}")
    return getattr(obj, name)
