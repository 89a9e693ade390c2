"""The ``syncengine`` command group: its global options and its commands."""

from __future__ import annotations

from pathlib import Path

import click

from syncengine import __version__
from syncengine.cli.account import login, logout
from syncengine.cli.context import CliGroup, State
from syncengine.cli.reads import conversations, messages, outbox, status
from syncengine.cli.run import daemon, demo
from syncengine.cli.sync import sync, tail
from syncengine.cli.writes import (
    cancel,
    create,
    delete,
    edit,
    members,
    react,
    read,
    retry,
    send,
)
from syncengine.paths import default_db_path

__all__ = ["cli", "main"]


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncengine")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SYNCENGINE_DB",
    default=None,
    help="The store file [env SYNCENGINE_DB; default: the platform's user data folder].",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print exactly one JSON document on stdout (JSON lines for 'tail').",
)
@click.pass_context
def cli(ctx: click.Context, db: Path | None, as_json: bool) -> None:
    """Offline-first messaging sync engine: inspect and drive the sync state."""
    ctx.obj = State(db=Path(db) if db is not None else default_db_path(), json=as_json)


def _register() -> None:
    from syncengine.server.cli import serve

    serve.short_help = "Run the reference server."
    for param in serve.params:  # the server's CLI is shared; its help is completed here
        if isinstance(param, click.Option) and param.name == "log_level" and not param.help:
            param.help = "Least severe log lines written."

    for command in (
        login,
        logout,
        status,
        conversations,
        messages,
        outbox,
        create,
        send,
        edit,
        delete,
        read,
        react,
        members,
        cancel,
        retry,
        sync,
        tail,
        daemon,
        demo,
        serve,
    ):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="syncengine")
