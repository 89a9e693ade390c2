"""``login`` and ``logout``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from syncengine.cli.context import run, state
from syncengine.cli.render import console, emit_json
from syncengine.clickutil import OneLineCommand, OneLineUsageError
from syncengine.errors import UsageError

__all__ = ["login", "logout"]


def _read_password() -> str:
    """``SYNCENGINE_PASSWORD``, else a hidden prompt on a terminal, else stdin's first line."""
    env = os.environ.get("SYNCENGINE_PASSWORD")
    if env:
        _check_utf8(env, "SYNCENGINE_PASSWORD")
        return env
    stdin = sys.stdin
    if stdin.isatty():
        try:
            return str(click.prompt("Password", hide_input=True, err=True))
        except click.exceptions.Abort:
            raise KeyboardInterrupt from None  # Ctrl-C (or Ctrl-D) at the prompt
    try:
        line = stdin.readline()
    except UnicodeDecodeError:
        raise OneLineUsageError("the password on stdin is not valid UTF-8") from None
    password = line.rstrip("\r\n")
    if not password:
        raise UsageError(
            "no password: type it at the prompt, pipe it on stdin, or set SYNCENGINE_PASSWORD"
        )
    _check_utf8(password, "the password")
    return password


def _check_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise OneLineUsageError(f"{what} is not valid UTF-8") from None


def _server_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The server URL, stripped; a malformed one is a usage error (exit 2) before any I/O."""
    from urllib.parse import urlsplit

    url = value.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port out of range or not a number
        host = parts.hostname
    except ValueError as exc:
        raise click.BadParameter(f"{url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise click.BadParameter(
            f"{url!r}: expected http(s)://HOST[:PORT], e.g. http://127.0.0.1:8765"
        )
    if port == 0:
        raise click.BadParameter(f"{url!r}: port 0 is not a port to connect to")
    if parts.query or parts.fragment:
        raise click.BadParameter(f"{url!r}: a server URL has no ?query or #fragment")
    return url


@click.command(cls=OneLineCommand, short_help="Log in to a server; keep the token.")
@click.argument("server_url", callback=_server_url)
@click.argument("user")
@click.option("--device", default=None, help="This device's name [default: host name + suffix].")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA bundle to verify the server's certificate with (remembered for this store).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow plain http/ws to a host that is not loopback (remembered for this store).",
)
@click.option(
    "--protocol",
    type=click.Choice(["auto", "matrix", "v1"]),
    default="auto",
    show_default=True,
    help="The server's protocol: a Matrix homeserver, syncengine's own (v1), or auto "
    "(a server answering /_matrix/client/versions is Matrix). Remembered for this store.",
)
@click.pass_context
def login(
    ctx: click.Context,
    server_url: str,
    user: str,
    device: str | None,
    ca_file: str | None,
    insecure: bool,
    protocol: str,
) -> None:
    """Log in to SERVER_URL as USER and keep the token (mode 0600) beside the store.

    The password comes from SYNCENGINE_PASSWORD when set, else from a prompt on a terminal,
    else from the first line of stdin.
    """
    from syncengine.local import login as local_login

    st = state(ctx)
    password = _read_password()
    ca_path = str(Path(ca_file).resolve()) if ca_file else None
    account = run(
        local_login(
            st.db,
            server_url,
            user,
            password,
            device=device,
            ca_file=ca_path,
            insecure=insecure,
            protocol=protocol,
        )
    )
    if st.json:
        emit_json(
            {
                "server": account["server"],
                "user": account["user"],
                "device": account["device"],
                "protocol": account.get("protocol"),
            }
        )
    else:
        console().print(
            f"Logged in as [bold]{account['user']}[/] on {account['server']} "
            f"(device {account['device']}); store {st.db}"
        )


@click.command(cls=OneLineCommand)
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Forget the token. Local messages and queued operations are kept."""
    from syncengine.local import logout as local_logout

    st = state(ctx)
    was_logged_in = run(local_logout(st.db))
    if st.json:
        emit_json({"logged_out": True, "had_token": was_logged_in})
    else:
        console().print("Logged out." if was_logged_in else "Was not logged in.")
