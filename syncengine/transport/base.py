"""The transport seam: what the engine needs from a server, whatever the protocol.

The engine talks only to :class:`Transport` and :class:`LiveLink`; ``rest.py`` (httpx) and
``live.py`` (websockets) implement them for protocol v1. Another protocol can be added beside
them without touching the store or the core. Whatever the protocol, a transport returns typed
values and raises only :mod:`syncengine.errors` (plus :class:`LiveUnavailable`, which the
engine handles itself).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from syncengine.errors import UsageError
from syncengine.events import ServerEvent
from syncengine.transport.snapshots import ConversationList, PresenceSnapshot
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
    """One open live connection.

    Every method raises only :mod:`syncengine.errors` exceptions (the link is lost:
    ``ServerUnavailable``; the token was refused: ``AuthFailed``; a bad frame: ``WireError``).
    """

    head: int

    async def recv(self) -> ServerEvent | None:
        """Next event (None for a frame that was not an event, e.g. a keep-alive)."""
        ...

    async def send_typing(self, conversation_id: str, typing: bool) -> None:
        """Tell the server this user started or stopped typing in a conversation."""
        ...

    async def send_presence(self, status: str) -> None:
        """Tell the server this user's presence (``online`` or ``away``)."""
        ...

    async def close(self) -> None:
        """Close the link; never raises."""
        ...


class Transport(Protocol):
    """Everything the engine asks of a server.

    Every method raises only :mod:`syncengine.errors` exceptions, chosen by the status table
    (:data:`syncengine.core.policy.STATUS_TABLE`) for an HTTP answer, and by the exception
    boundary (:mod:`syncengine.transport.boundary`) for a network or usage failure.
    """

    async def login(self, user: str, password: str, device: str) -> str:
        """Exchange credentials for a token (not stored by the transport)."""
        ...

    def set_token(self, token: str | None) -> None:
        """Use ``token`` for every following request (None: anonymous)."""
        ...

    async def push(self, ops: Sequence[dict[str, Any]]) -> list[OpResult]:
        """Send a batch of operations; one verdict per operation."""
        ...

    async def pull(self, since: int, limit: int) -> EventPage:
        """One page of events after the cursor ``since``."""
        ...

    async def history(
        self, conversation_id: str, before: int | None, limit: int
    ) -> HistoryPageWire:
        """One page of a conversation's history before ``before`` (oldest first)."""
        ...

    async def conversations(self) -> tuple[list[dict[str, Any]], int]:
        """The user's conversations as dicts, and the head (see ``conversation_list``)."""
        ...

    async def presence(self) -> list[dict[str, Any]]:
        """The presence snapshot as dicts (see ``presence_list``)."""
        ...

    async def conversation_list(self) -> ConversationList:
        """The user's conversations, typed, and the stream head when they were read."""
        ...

    async def presence_list(self) -> tuple[PresenceSnapshot, ...]:
        """The presence of every user who shares a conversation with this one, typed."""
        ...

    async def connect_live(self) -> LiveLink:
        """Open and authenticate the live channel.

        Raises:
            LiveUnavailable: the live path is refused (poll over REST instead).
        """
        ...

    async def aclose(self) -> None:
        """Release the connections."""
        ...


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
        UsageError: not an http(s) URL (a port out of range or not a number, an unclosed
            IPv6 bracket included), or plain http to a remote host.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: it raises ValueError
    except ValueError as exc:
        raise UsageError(f"server URL must look like https://host[:port], got {url!r}") from exc
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
