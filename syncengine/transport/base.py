"""The transport seam: what the engine needs from a server, whatever the protocol.

The engine talks only to :class:`Transport` and :class:`LiveLink`; ``rest.py`` (httpx) and
``live.py`` (websockets) implement them for protocol v1. Another protocol can be added beside
them without touching the store or the core.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from syncengine.errors import UsageError
from syncengine.events import ServerEvent
from syncengine.wire import EventPage, HistoryPageWire, OpResult

__all__ = [
    "LiveLink",
    "LiveUnavailable",
    "Transport",
    "check_url",
    "is_loopback_host",
    "make_ssl_context",
]


class LiveUnavailable(Exception):
    """The live channel was refused at the handshake (a proxy, a blocked path): poll instead.

    Internal to the engine: never raised to applications.
    """


class LiveLink(Protocol):
    """One open live connection."""

    head: int

    async def recv(self) -> ServerEvent | None:
        """Next event (None for a frame that was not an event, e.g. a keep-alive)."""
        ...

    async def send_typing(self, conversation_id: str, typing: bool) -> None: ...

    async def send_presence(self, status: str) -> None: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Everything the engine asks of a server."""

    async def login(self, user: str, password: str, device: str) -> str: ...

    def set_token(self, token: str | None) -> None: ...

    async def push(self, ops: Sequence[dict[str, Any]]) -> list[OpResult]: ...

    async def pull(self, since: int, limit: int) -> EventPage: ...

    async def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> HistoryPageWire: ...

    async def conversations(self) -> tuple[list[dict[str, Any]], int]: ...

    async def presence(self) -> list[dict[str, Any]]: ...

    async def connect_live(self) -> LiveLink: ...

    async def aclose(self) -> None: ...


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_insecure: bool = False) -> str:
    """Validate a server URL; plain http is refused for non-loopback hosts unless allowed.

    Returns the URL without a trailing slash.

    Raises:
        UsageError: not an http(s) URL, or plain http to a remote host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"server URL must look like https://host[:port], got {url!r}")
    if parts.username or parts.password:
        raise UsageError("credentials must not be put in the server URL")
    if parts.scheme == "http" and not allow_insecure and not is_loopback_host(parts.hostname):
        raise UsageError(
            f"refusing plain http to {parts.hostname}: use https, or allow insecure "
            "transport explicitly (allow_insecure=True / --insecure)"
        )
    return url.rstrip("/")


def make_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The one TLS context shared by REST and the live channel: verification always on."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load CA file {ca_file}: {exc}") from None
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
