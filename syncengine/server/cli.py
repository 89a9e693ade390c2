"""``syncengine serve``: run the reference server (with simulated bots and faults, if asked)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import click
import platformdirs

from syncengine.clickutil import OneLineCommand
from syncengine.logs import install_redaction
from syncengine.protocol.ops import PAGE_BYTES_DEFAULT, PAGE_BYTES_MAX
from syncengine.server.config import FaultConfig, ServerConfig, is_loopback
from syncengine.server.logfilter import install_repeat_filter

__all__ = ["default_data_dir", "serve"]


def default_data_dir() -> Path:
    """Where ``serve`` keeps its database unless ``--data`` says otherwise."""
    return Path(platformdirs.user_data_dir("syncengine")) / "server"


def _load_users(path: Path) -> list[tuple[str, str]]:
    """``name:password`` lines (blank lines and ``#`` comments are skipped)."""
    users = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise click.ClickException(f"{path}:{number}: expected name:password")
        users.append((name, password))
    return users


def _where(config: ServerConfig) -> str:
    """Where the data lives, for the banner (a database URL without its password)."""
    if config.database_url:
        scheme, _, rest = config.database_url.partition("://")
        cred, at, host = rest.rpartition("@")
        return f"{scheme}://{cred.partition(':')[0]}@{host}" if at else config.database_url
    return str(config.data_dir)


async def _serve(config: ServerConfig, users: list[tuple[str, str]]) -> None:
    # Imported here: every `syncengine` command registers `serve`, and only `serve` needs
    # Starlette and uvicorn (this keeps the CLI's read commands quick to start).
    from syncengine.protocol.errors import Rejection
    from syncengine.server.runner import ServerHandle

    handle = ServerHandle(config)
    await handle.start()
    try:
        for name, password in users:
            try:
                await handle.core.set_password(name, password)
            except Rejection as exc:
                raise click.ClickException(f"--users: {name}: {exc.reason}") from None
        click.echo(f"syncengine server listening on {handle.url}")
        click.echo(
            f"data: {_where(config)}  registration: "
            f"{'open' if config.registration_open else 'closed'}"
            + (f"  simulating {config.simulate} bots" if config.simulate else "")
        )
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        click.echo("stopping")
    finally:
        await handle.stop()


@click.command(cls=OneLineCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    default=8765,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to bind (0 picks a free one).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory [default: the platform's user data dir/syncengine/server].",
)
@click.option(
    "--database",
    "database_url",
    default=None,
    metavar="URL",
    help="postgresql://USER@HOST:PORT/DB: keep everything in PostgreSQL instead of SQLite "
    "under --data; several servers on one database are nodes of one server.",
)
@click.option(
    "--retention",
    type=click.IntRange(min=1),
    default=None,
    help="Keep only the last N events (older cursors get 410).",
)
@click.option(
    "--open-registration/--closed-registration",
    default=None,
    help="Create unknown users at their first login [default: open only on loopback].",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="File of name:password lines: users created (or reset) at startup.",
)
@click.option(
    "--token-ttl",
    type=click.FloatRange(min=1),
    default=30 * 24 * 3600.0,
    show_default=True,
    help="Token lifetime in seconds.",
)
@click.option(
    "--simulate", type=click.IntRange(min=0), default=0, help="Add N bots that chat (bot1..botN)."
)
@click.option(
    "--simulate-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=0.2,
    show_default=True,
    help="Actions per second of each bot.",
)
@click.option(
    "--fault-5xx-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of REST requests answered 503 before they are handled.",
)
@click.option(
    "--fault-lost-ack-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of REST requests handled but answered 503 (lost acknowledgement).",
)
@click.option(
    "--fault-delay-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Latency added to every REST request.",
)
@click.option(
    "--fault-drop-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Probability, per live frame, of dropping the connection instead.",
)
@click.option("--fault-seed", type=int, default=None, help="Seed of the fault generator.")
@click.option(
    "--rate",
    "rate_per_s",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="REST requests per second per user (writes and reads other than pulls).",
)
@click.option(
    "--burst",
    "rate_burst",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="REST burst size per user.",
)
@click.option(
    "--pull-rate",
    "pull_rate_per_s",
    type=click.FloatRange(min=0, min_open=True),
    default=1000.0,
    show_default=True,
    help="Pulls (catch-up pages) per second per user: a budget of their own.",
)
@click.option(
    "--pull-burst",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Pull burst size per user.",
)
@click.option(
    "--page-bytes",
    type=click.IntRange(1024, PAGE_BYTES_MAX),
    default=PAGE_BYTES_DEFAULT,
    show_default=True,
    help="Byte budget of one pull or history page (one event always fits).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    help="Open connections in all [default: as many as the descriptor limit allows].",
)
@click.option(
    "--max-connections-per-ip",
    type=click.IntRange(min=0),
    default=128,
    show_default=True,
    help="Open connections per client address (IPv6: per /64); 0 for no cap.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a connection has to send a complete request head.",
)
@click.option(
    "--keep-alive-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds an idle keep-alive connection stays open.",
)
@click.option(
    "--register-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Registrations per second per client address (open registration).",
)
@click.option(
    "--register-burst",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Registration burst per client address.",
)
@click.option(
    "--login-fail-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=0.2,
    show_default=True,
    help="Failed logins per second per (client address, user name).",
)
@click.option(
    "--login-fail-burst",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Failed-login burst per (client address, user name).",
)
@click.option(
    "--login-fail-ip-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Failed logins per second per client address.",
)
@click.option(
    "--login-fail-ip-burst",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Failed-login burst per client address.",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Proxies (comma-separated, or *) trusted to name the client in X-Forwarded-For "
    "[default: none; limits use the connection's address].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
def serve(
    host: str,
    port: int,
    data_dir: Path | None,
    database_url: str | None,
    retention: int | None,
    open_registration: bool | None,
    users_file: Path | None,
    token_ttl: float,
    simulate: int,
    simulate_rate: float,
    fault_5xx_rate: float,
    fault_lost_ack_rate: float,
    fault_delay_ms: float,
    fault_drop_rate: float,
    fault_seed: int | None,
    rate_per_s: float,
    rate_burst: int,
    pull_rate_per_s: float,
    pull_burst: int,
    log_level: str,
    page_bytes: int = PAGE_BYTES_DEFAULT,
    max_connections: int | None = None,
    max_connections_per_ip: int = 128,
    header_timeout: float = 10.0,
    keep_alive_timeout: float = 5.0,
    register_rate: float = 0.1,
    register_burst: int = 20,
    login_fail_rate: float = 0.2,
    login_fail_burst: int = 10,
    login_fail_ip_rate: float = 1.0,
    login_fail_ip_burst: int = 50,
    forwarded_allow_ips: str | None = None,
) -> None:
    """Run the reference server (Ctrl-C or SIGTERM stops it cleanly)."""
    if open_registration and not is_loopback(host):
        click.echo(
            f"warning: open registration on {host}: anyone who can reach it can create users",
            err=True,
        )
    try:
        faults = FaultConfig(
            error_rate=fault_5xx_rate,
            lost_ack_rate=fault_lost_ack_rate,
            delay_ms=fault_delay_ms,
            drop_rate=fault_drop_rate,
            seed=fault_seed,
        )
        config = ServerConfig(
            data_dir=data_dir or default_data_dir(),
            host=host,
            port=port,
            retention=retention,
            database_url=database_url,
            open_registration=open_registration,
            token_ttl_s=token_ttl,
            simulate=simulate,
            simulate_rate=simulate_rate,
            faults=faults,
            rate_per_s=rate_per_s,
            rate_burst=rate_burst,
            pull_rate_per_s=pull_rate_per_s,
            pull_burst=pull_burst,
            page_bytes=page_bytes,
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip or None,
            header_timeout_s=header_timeout,
            keep_alive_timeout_s=keep_alive_timeout,
            register_rate_per_s=register_rate,
            register_burst=register_burst,
            login_fail_rate_per_s=login_fail_rate,
            login_fail_burst=login_fail_burst,
            login_fail_ip_rate_per_s=login_fail_ip_rate,
            login_fail_ip_burst=login_fail_ip_burst,
            forwarded_allow_ips=forwarded_allow_ips,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    users = _load_users(users_file) if users_file is not None else []
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_redaction()
    install_repeat_filter()  # a flood of one error is a few lines, not megabytes
    try:
        asyncio.run(_serve(config, users))
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from None
