"""Configuration of the reference server: :class:`ServerConfig` and :class:`FaultConfig`.

Durations are float seconds, sizes are bytes unless the name says otherwise. Every limit that
a test needs to reach quickly (typing expiry, presence debounce, rate limits, body size) is
configurable here; the protocol's fixed limits (batch size, message length, page caps) live
in :mod:`syncengine.server.state`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs

from syncengine.protocol.ops import PAGE_BYTES_DEFAULT, PAGE_BYTES_MAX
from syncengine.transport.base import is_loopback_host

__all__ = ["FaultConfig", "ServerConfig", "is_loopback"]


# One definition of "loopback" for the client (plain http allowed) and the server (open
# registration allowed).
is_loopback = is_loopback_host


def _rate(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value}")


def _non_negative(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


def _positive(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.define(kw_only=True)
class FaultConfig:
    """Faults the server injects on purpose. Mutable: tests change it while the server runs.

    Attributes:
        error_rate: fraction of REST requests (all but ``/v1/health``) answered ``503
            unavailable`` before they are handled (no effect happened).
        lost_ack_rate: fraction of REST requests that are handled (the effect is committed)
            but answered ``503 unavailable``: the acknowledgement is lost.
        delay_ms: added latency before each REST request is handled.
        drop_rate: probability, per frame about to be sent on a live connection, that the
            connection is dropped instead (closed with ``1012``; the frame and the queue
            behind it are lost, the client must catch up over REST).
        seed: seed of the fault generator, so a run can be replayed; ``None`` for a random
            seed.
    """

    error_rate: float = attrs.field(default=0.0, validator=_rate)
    lost_ack_rate: float = attrs.field(default=0.0, validator=_rate)
    delay_ms: float = attrs.field(default=0.0, validator=_non_negative)
    drop_rate: float = attrs.field(default=0.0, validator=_rate)
    seed: int | None = None
    rng: random.Random = attrs.field(init=False, repr=False)
    injected: dict[str, int] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def active(self) -> bool:
        """True when any fault is switched on."""
        return bool(self.error_rate or self.lost_ack_rate or self.delay_ms or self.drop_rate)

    def roll(self, kind: str, rate: float) -> bool:
        """Draw whether a fault of ``kind`` happens now, counting it in :attr:`injected`.

        Args:
            kind: a name for the fault (``"5xx"``, ``"lost_ack"``, ``"drop"``).
            rate: its probability.

        Returns:
            True when the fault is to be injected.
        """
        if rate <= 0.0 or self.rng.random() >= rate:
            return False
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return True

    def clear(self) -> None:
        """Switch every fault off (the counters are kept)."""
        self.error_rate = self.lost_ack_rate = self.delay_ms = self.drop_rate = 0.0


@attrs.define(kw_only=True)
class ServerConfig:
    """Everything the reference server can be told.

    Attributes:
        data_dir: directory of the server's SQLite database (created if missing).
        host: address to bind.
        port: port to bind (0 picks a free one).
        retention: keep only the last N events of the log (``None`` keeps all); a pull from
            an older cursor gets ``410 cursor_expired``.
        open_registration: the first login of an unknown user creates it. ``None`` means
            "only when bound to a loopback address".
        refuse_unknown_members: refuse (``404 unknown_user``) a conversation or a new member
            naming a user who has no account here; off only for test servers whose users
            log in after being added.
        token_ttl_s: lifetime of a login token.
        scrypt_n: scrypt cost parameter for new password hashes (a power of two).
        rate_per_s: sustained REST requests per second per user.
        rate_burst: REST burst size per user.
        pull_rate_per_s: sustained pulls (``GET /v1/events`` pages) per second per user, a
            budget of their own so that a catch-up is not throttled by :attr:`rate_per_s`.
        pull_burst: pull burst size per user.
        login_rate_per_s: sustained login attempts per second per user name.
        login_burst: login burst size per user name.
        login_rate_per_s: sustained successful logins (tokens issued) per second per user
            name; failed attempts never spend it, so nobody can lock a user out with it.
        login_burst: burst of successful logins per user name.
        login_fail_rate_per_s: sustained failed logins per second per (client address,
            user name); past it, attempts from that address for that name get ``429``
            before their password is even checked.
        login_fail_burst: burst of failed logins per (client address, user name).
        login_fail_ip_rate_per_s: sustained failed logins per second per client address,
            whatever the name.
        login_fail_ip_burst: burst of failed logins per client address.
        register_rate_per_s: sustained registrations (users created by a first login with
            open registration) per second per client address.
        register_burst: burst of registrations per client address.
        ws_rate_per_s: typing/presence frames per second per live connection.
        ws_burst: typing/presence burst per live connection.
        ws_flood_limit: rate-limited frames in a row after which the connection is closed
            (``1008 rate_limited``).
        typing_ttl_s: typing expires on the server after this long without a refresh.
        presence_leave_s: a user becomes offline this long after their last connection closed.
        ws_auth_timeout_s: time a new live connection has to send its ``auth`` frame.
        ws_ping_interval_s: interval of the server's WebSocket pings (``None``: no pings).
        ws_ping_timeout_s: a ping not answered within this closes the connection.
        ws_max_frame_bytes: larger client frames close the connection with ``1009``.
        ws_send_queue: frames queued for one connection before it is closed with ``1013``.
        max_body_bytes: larger REST request bodies are refused with ``413``.
        page_bytes: byte budget of one pull or history page (at least one event is always
            sent); at most :data:`~syncengine.protocol.ops.PAGE_BYTES_MAX` (16 MiB, half
            of what the engine accepts).
        shutdown_timeout_s: how long a stopping server waits for open connections.
        max_connections: open connections in all (``None``: as many as the descriptor limit
            allows, keeping a reserve); always bounded by the descriptor limit.
        max_connections_per_ip: open connections per client address (IPv6: per /64);
            ``None`` for no cap. Past a cap, a new connection is refused at once (reset).
        header_timeout_s: time a connection has to send a complete request head, from its
            opening or the end of its previous response (a WebSocket handshake included).
        keep_alive_timeout_s: an idle keep-alive connection is closed after this long
            (whole seconds, rounded up).
        max_header_bytes: largest request head (request line and headers).
        forwarded_allow_ips: addresses of proxies whose ``X-Forwarded-For`` names the client
            (comma-separated, or ``*``); ``None`` trusts no such header, so every limit per
            address uses the connection's own peer.
        simulate: number of simulated bot users (``bot1`` … ``botN``); 0 for none.
        simulate_rate: actions per second of each bot.
        simulate_seed: seed of the bots' choices (``None``: random).
        faults: faults to inject (see :class:`FaultConfig`).
        database_url: ``postgresql://USER@HOST:PORT/DB``: keep everything in PostgreSQL
            instead of SQLite under :attr:`data_dir`; several servers on one database are
            the nodes of one server (see ``docs/server.md``). ``None``: SQLite.
        cluster_catchup_s: on PostgreSQL, how often a node reads the log for events that
            other nodes committed, in case a notification was missed.
    """

    data_dir: Path = attrs.field(converter=Path)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8765)
    retention: int | None = attrs.field(default=None)
    open_registration: bool | None = None
    refuse_unknown_members: bool = True
    token_ttl_s: float = attrs.field(default=30 * 24 * 3600.0, validator=_positive)
    scrypt_n: int = attrs.field(default=1 << 14)
    rate_per_s: float = attrs.field(default=50.0, validator=_positive)
    rate_burst: int = attrs.field(default=100, validator=_positive)
    pull_rate_per_s: float = attrs.field(default=1000.0, validator=_positive)
    pull_burst: int = attrs.field(default=2000, validator=_positive)
    login_rate_per_s: float = attrs.field(default=5.0, validator=_positive)
    login_burst: int = attrs.field(default=20, validator=_positive)
    login_fail_rate_per_s: float = attrs.field(default=0.2, validator=_positive)
    login_fail_burst: int = attrs.field(default=10, validator=_positive)
    login_fail_ip_rate_per_s: float = attrs.field(default=1.0, validator=_positive)
    login_fail_ip_burst: int = attrs.field(default=50, validator=_positive)
    register_rate_per_s: float = attrs.field(default=0.1, validator=_positive)
    register_burst: int = attrs.field(default=20, validator=_positive)
    ws_rate_per_s: float = attrs.field(default=10.0, validator=_positive)
    ws_burst: int = attrs.field(default=10, validator=_positive)
    ws_flood_limit: int = attrs.field(default=50, validator=_positive)
    typing_ttl_s: float = attrs.field(default=8.0, validator=_positive)
    presence_leave_s: float = attrs.field(default=10.0, validator=_non_negative)
    ws_auth_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    ws_ping_interval_s: float | None = 20.0
    ws_ping_timeout_s: float | None = 20.0
    ws_max_frame_bytes: int = attrs.field(default=64 * 1024, validator=_positive)
    ws_send_queue: int = attrs.field(default=4096, validator=_positive)
    max_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    page_bytes: int = attrs.field(default=PAGE_BYTES_DEFAULT)
    shutdown_timeout_s: float = attrs.field(default=5.0, validator=_non_negative)
    max_connections: int | None = attrs.field(default=None)
    max_connections_per_ip: int | None = attrs.field(default=128)
    header_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    keep_alive_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=_positive)
    forwarded_allow_ips: str | None = None
    simulate: int = attrs.field(default=0, validator=_non_negative)
    simulate_rate: float = attrs.field(default=0.2, validator=_positive)
    simulate_seed: int | None = None
    faults: FaultConfig = attrs.field(factory=FaultConfig)
    database_url: str | None = attrs.field(default=None)
    cluster_catchup_s: float = attrs.field(default=1.0, validator=_positive)

    @database_url.validator
    def _check_database_url(self, _attribute: attrs.Attribute[Any], value: str | None) -> None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"the database must be a postgresql:// URL, got {value!r}")

    @port.validator
    def _check_port(self, _attribute: attrs.Attribute[Any], value: int) -> None:
        if not 0 <= value <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {value}")

    @retention.validator
    def _check_retention(self, _attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"retention must be at least 1 event, got {value}")

    @scrypt_n.validator
    def _check_scrypt_n(self, _attribute: attrs.Attribute[Any], value: int) -> None:
        if value < 2 or value & (value - 1):
            raise ValueError(f"scrypt_n must be a power of two, got {value}")

    @max_connections.validator
    @max_connections_per_ip.validator
    def _check_connection_cap(self, attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"{attribute.name} must be at least 1, got {value}")

    @page_bytes.validator
    def _check_page_bytes(self, _attribute: attrs.Attribute[Any], value: int) -> None:
        if not 1024 <= value <= PAGE_BYTES_MAX:
            raise ValueError(f"page_bytes must be between 1024 and {PAGE_BYTES_MAX}, got {value}")

    @property
    def registration_open(self) -> bool:
        """Whether unknown users are created at their first login."""
        if self.open_registration is None:
            return is_loopback(self.host)
        return self.open_registration

    @property
    def db_path(self) -> Path:
        """The server database file inside :attr:`data_dir`."""
        return self.data_dir / "server.sqlite3"
