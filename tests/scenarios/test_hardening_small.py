"""Small deviations of the reference server and the CLI from their documents (issue 13, item 4).

On real sockets and real files:

- a path with a trailing slash (``/v1/events/``) gets the protocol's JSON error, not a
  ``307`` redirect to another URL;
- ``GET /v1/presence`` includes the caller even when the caller has no conversation (the
  protocol says "the caller included");
- under ``umask 000`` every folder the server (``syncengine serve --data``) or the CLI
  (``syncengine --db ... login``) creates, parents included, is ``0700``: today only the last
  one is, its parents are ``0777``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from syncengine.server.testing import login, run_server

pytestmark = [pytest.mark.integration]


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def _umask_000() -> None:
    os.umask(0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/v1/events/", "/v1/conversations/", "/v1/presence/"])
async def test_trailing_slash_gets_a_json_error_not_a_redirect(tmp_path: Path, path: str) -> None:
    async with run_server(tmp_path / "srv") as srv:
        token = await login(srv.url, "alice")
        async with httpx.AsyncClient(base_url=srv.url, follow_redirects=False) as http:
            r = await http.get(path, headers={"Authorization": f"Bearer {token}"})
    assert not r.is_redirect, f"{path} -> {r.status_code} Location: {r.headers.get('location')}"
    assert 400 <= r.status_code < 500, r.status_code
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body.get("code"), str) and isinstance(body.get("reason"), str), body


@pytest.mark.timeout(30)
async def test_presence_list_includes_a_caller_without_conversations(tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv") as srv:
        token = await login(srv.url, "loner")
        async with httpx.AsyncClient(base_url=srv.url) as http:
            r = await http.get("/v1/presence", headers={"Authorization": f"Bearer {token}"})
    if r.status_code != 200:
        raise RuntimeError(f"GET /v1/presence: {r.status_code} {r.text}")
    users = [p["user"] for p in r.json()["presence"]]
    assert "loner" in users, f"the caller is missing from {users}"


@pytest.mark.timeout(60)
def test_serve_creates_every_data_folder_0700_under_umask_000(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = root / "a" / "b" / "data"
    out = tmp_path / "serve.out"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncengine.cli", "serve", "--port", "0", "--data", str(data)],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            preexec_fn=_umask_000,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 30
        while not re.search(rb"listening on http://", out.read_bytes()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {out.read_text()}")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    created = [root / "a", root / "a" / "b", data]
    modes = {str(p.relative_to(root)): _mode(p) for p in created}
    assert modes == dict.fromkeys(modes, "0o700"), modes


@pytest.mark.timeout(60)
async def test_cli_creates_every_store_folder_0700_under_umask_000(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    db = root / "x" / "y" / "alice.db"
    async with run_server(tmp_path / "srv") as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "syncengine.cli",
            "--db",
            str(db),
            "login",
            srv.url,
            "alice",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_umask_000,
            env={**os.environ, "SYNCENGINE_PASSWORD": "alice-pw"},
        )
        async with asyncio.timeout(30):
            output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"login failed ({proc.returncode}): {output.decode()}")
    created = [root / "x", root / "x" / "y"]
    modes = {str(p.relative_to(root)): _mode(p) for p in created}
    assert modes == dict.fromkeys(modes, "0o700"), modes
