"""Issue 14 item 2: hostile strings for every CLI argument and public API string parameter.

The API raises a typed :class:`SyncEngineError` (never httpx, websockets, sqlite3, or a bare
ValueError/TypeError/UnicodeError); the CLI prints one line on stderr, no traceback, and exits
1 or 2. Example counts are small: the API level runs in-process, the CLI level spawns a
handful of subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine import SyncEngine, SyncEngineError
from syncengine.server.config import ServerConfig
from syncengine.server.testing import TEST_DEFAULTS, ServerThread

pytestmark = pytest.mark.integration

#: Strings that broke things once, and their kind: ports out of range, brackets, surrogates
#: (what a non-UTF-8 argv decodes to), NULs, control characters, huge and empty ones.
NASTY = [
    "",
    " ",
    "\x00",
    "\udcff",
    "a\udcffb",
    "\n",
    "\r\n",
    "\t",
    "../../etc/passwd",
    "%00",
    "%",
    "?",
    "#",
    "/",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:abc",
    "http://[::1",
    "https://127.0.0.1:1",
    "http://127.0.0.1:1/v1",
    "ws://x",
    "http://",
    "http://:80",
    "http://user:pw@127.0.0.1:1",
    "x" * 20_000,
    "é" * 10,
    "\u202e",
    "\ufeff",
    "-",
    "--json",
    "-h",
]
hostile = st.one_of(st.sampled_from(NASTY), st.text(max_size=40))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("server"), **TEST_DEFAULTS)
    with ServerThread(config) as server:
        yield server


def typed_only(exc: BaseException) -> None:
    assert isinstance(exc, SyncEngineError), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"


async def _api_calls(db: Path, url: str, args: dict[str, str]) -> None:
    """Every public string parameter, with a hostile value, each call on its own."""
    logins = (
        (args["url"], "api", "pw", None),
        (url, args["user"], "pw", None),
        (url, "victim", args["password"], None),
        (url, "api", "pw", args["device"]),
    )
    for n, (server, user, password, device) in enumerate(logins):
        async with SyncEngine(db.with_name(f"login{n}.db"), connect=False) as other:
            try:  # each on its own store: a login that succeeds binds the store
                await other.login(server, user, password, device=device)
            except Exception as exc:
                typed_only(exc)
    async with SyncEngine(db, connect=False) as engine:
        try:
            await engine.login(url, "api", "pw")
        except Exception as exc:  # the good login must work
            raise AssertionError(f"good login failed: {exc!r}") from exc
        conv = await engine.create_conversation("ok")
        for call in (
            lambda: engine.send(args["conv"], "hi"),
            lambda: engine.send(conv.id, args["body"]),
            lambda: engine.send(conv.id, "hi", op_id=args["op_id"]),
            lambda: engine.create_conversation(args["title"]),
            lambda: engine.create_conversation("t", members=[args["member"]]),
            lambda: engine.create_conversation("t", conversation_id=args["conv"]),
            lambda: engine.messages(_text(args["conv"])),
            lambda: engine.retry([_text(args["op_id"])]),
            lambda: engine.mark_read(args["conv"]),
            lambda: engine.set_typing(_text(args["conv"]), True),
            lambda: engine.presence(_text(args["member"])),
        ):
            try:
                await call()
            except Exception as exc:
                typed_only(exc)
        await engine.sync_once()  # whatever was queued: pushed or refused, typed


def _text(value: str) -> str:
    """Without lone surrogates: the engine's read paths do not check them yet (see
    :func:`test_api_read_paths_refuse_lone_surrogates`, a known gap outside the CLI)."""
    return value.encode("utf-8", "replace").decode("utf-8")


@pytest.mark.xfail(
    strict=True,
    reason="engine/store read paths (messages, retry, set_typing, presence) let a lone "
    "surrogate reach sqlite3: UnicodeEncodeError (engine.py and store/ are outside this "
    "change; reported in issue 14's hand-back)",
)
def test_api_read_paths_refuse_lone_surrogates(srv: ServerThread, tmp_path: Path) -> None:
    async def calls() -> None:
        async with SyncEngine(tmp_path / "a.db", connect=False) as engine:
            await engine.login(srv.url, "api", "pw")
            for call in (
                lambda: engine.messages("\udcff"),
                lambda: engine.retry(["\udcff"]),
                lambda: engine.set_typing("\udcff", True),
                lambda: engine.presence("\udcff"),
            ):
                try:
                    await call()
                except Exception as exc:
                    typed_only(exc)

    asyncio.run(calls())


NAMES = ("url", "user", "password", "device", "conv", "body", "op_id", "title", "member")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.fixed_dictionaries({name: hostile for name in NAMES}))
def test_api_raises_only_typed_errors(srv: ServerThread, args: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            asyncio.run(_api_calls(Path(folder) / "a.db", srv.url, args))
        except Exception as exc:
            typed_only(exc)


# --- the CLI, in subprocesses -----------------------------------------------------------------


def _cli(*args: str, input: str = "pw\n") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SYNCENGINE_DB", "SYNCENGINE_PASSWORD")}
    return subprocess.run(
        [sys.executable, "-m", "syncengine.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        errors="surrogateescape",
    )


def _argv(text: str) -> str:
    return text.replace("\x00", "")[:2000]  # argv cannot carry NUL; keep it quick


COMMANDS: list[Any] = [
    lambda db, url, v: ["--db", db, "login", v, "alice"],
    lambda db, url, v: ["--db", db, "login", url, v],
    lambda db, url, v: ["--db", db, "login", url, "alice", "--device", v],
    lambda db, url, v: ["--db", db, "send", v, "hi"],
    lambda db, url, v: ["--db", db, "messages", v],
    lambda db, url, v: ["--db", db, "create", v, "--member", v],
    lambda db, url, v: ["--db", db, "retry", v],
    lambda db, url, v: ["--db", v, "status"],
]


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.sampled_from(range(len(COMMANDS))), hostile)
def test_cli_is_one_line_for_hostile_arguments(
    srv: ServerThread, tmp_path: Path, which: int, value: str
) -> None:
    db = str(tmp_path / "alice.db")
    if not Path(db).exists():
        assert _cli("--db", db, "login", srv.url, "alice", input="alice-pw\n").returncode == 0
    done = _cli(*COMMANDS[which](db, srv.url, _argv(value)))
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode != 0:
        assert done.returncode in (1, 2), done.returncode
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["login", "http://127.0.0.1:99999", "alice"],
        ["login", "http://127.0.0.1:abc", "alice"],
        ["login", "http://[::1", "alice"],
        ["login", "http://127.0.0.1:1", os.fsdecode(b"\xff\xfe")],
        ["send", os.fsdecode(b"c\xff"), "hi"],
    ],
)
def test_cli_known_hostile_inputs_exit_2(tmp_path: Path, args: list[str]) -> None:
    done = _cli("--db", str(tmp_path / "a.db"), *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "a.db").exists()
