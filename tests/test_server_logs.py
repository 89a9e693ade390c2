"""Tokens never reach a log record, even with every logger at DEBUG."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

try:
    from conftest_server import live, next_frame
except ModuleNotFoundError:  # tests/ is a package
    from tests.conftest_server import live, next_frame

from syncengine.logs import REDACTED, RedactingFilter, install_redaction, redact
from syncengine.models import new_id
from syncengine.server.testing import run_server

pytestmark = pytest.mark.timeout(30)

SECRET = "Zm9vYmFyYmF6cXV1eC1zZWNyZXQtdG9rZW4tdmFsdWU"


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {SECRET}",
        f"('authorization', 'Bearer {SECRET}')",
        f"[(b'authorization', b'bearer {SECRET}')]",
        f'> TEXT \'{{"type": "auth", "token": "{SECRET}"}}\' [70 bytes]',
        f'{{"type":"auth","token":"{SECRET}"}}',
        f"{{'token': '{SECRET}', 'user': 'alice'}}",
        f'{{"token": "{SECRET[:20]}...',
        f"GET /v1/live?token={SECRET}&x=1",
        f'{{"user": "alice", "password": "{SECRET}"}}',
        f'{{"access_token": "{SECRET}"}}',
    ],
)
def test_redact_removes_every_form_of_secret(text: str) -> None:
    cleaned = redact(text)
    assert SECRET[:20] not in cleaned
    assert REDACTED in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in ("tokens: 5", '{"type": "ready", "head": 3}', "token_ttl_s 30", ""):
        assert redact(text) == text


def test_the_filter_cleans_args_and_keeps_access_log_args() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "%s %s %d", ("Bearer " + SECRET, "ok", 200), None
    )
    assert RedactingFilter().filter(record) is True
    assert record.args == ("Bearer [redacted]", "ok", 200)
    assert SECRET not in record.getMessage()
    try:
        raise ValueError(f"token={SECRET}")
    except ValueError:
        import sys

        failing = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    RedactingFilter().filter(failing)
    assert failing.exc_text is not None and SECRET not in failing.exc_text


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def everything_at_debug() -> Iterator[_Capture]:
    """Root and every library logger at DEBUG, all records captured (formatted)."""
    names = [
        "",
        "uvicorn",
        "uvicorn.error",
        "uvicorn.access",
        "websockets",
        "websockets.client",
        "websockets.server",
        "httpx",
        "httpcore",
        "starlette",
        "syncengine",
        "asyncio",
    ]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    capture = _Capture()
    capture.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(capture)
    try:
        yield capture
    finally:
        logging.getLogger().removeHandler(capture)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def test_no_token_in_any_log_record_at_debug(
    tmp_path: Path, everything_at_debug: _Capture
) -> None:
    install_redaction()
    async with run_server(tmp_path / "server") as srv, httpx.AsyncClient(base_url=srv.url) as c:
        login = await c.post("/v1/login", json={"user": "alice", "password": "pw", "device": "d"})
        token = login.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        cid = new_id()
        await c.post("/v1/conversations", json={"id": cid, "title": "t"}, headers=headers)
        await c.get("/v1/events", params={"since": 0}, headers=headers)
        await c.get("/v1/events", headers={"Authorization": "Bearer " + token[::-1]})
        async with asyncio.timeout(10):
            ws, _ready = await live(srv.ws_url, token)
            await ws.send(json.dumps({"type": "typing", "conversation_id": cid, "typing": True}))
            op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": "hi"}
            await c.post("/v1/ops", json={"ops": [op]}, headers=headers)
            await next_frame(ws, "message_received")
            await ws.close()
    text = "\n".join(everything_at_debug.lines)
    assert "uvicorn" in text and "websockets" in text  # the libraries did log
    assert REDACTED in text  # and something was redacted (the auth frame at least)
    assert token not in text
    assert token[::-1] not in text
    assert "pw" not in [line.rsplit(" ", 1)[-1] for line in everything_at_debug.lines]
