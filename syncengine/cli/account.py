"""``login`` and ``logout``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from syncengine.cli.context import run, state
from syncengine.cli.render import console, emit_json
from syncengine.clickutil import OneLineCommand
from syncengine.errors import UsageError

__all__ = ["login", "logout"]


def _read_password() -> str:
    """``SYNCENGINE_PASSWORD``, else a hidden prompt on a terminal, else stdin's first line."""
    env = os.environ.get("SYNCENGINE_PASSWORD")
    if env:
        return env
    stdin = sys.stdin
    if stdin.isatty():
        return str(click.prompt("Password", hide_input=True, err=True))
    line = stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise UsageError(
            "no password: type it at the prompt, pipe it on stdin, or set SYNCENGINE_PASSWORD"
        )
    return password


@click.command(cls=OneLineCommand)
@click.argument("server_url")
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
