"""The ``syncengine`` command line: thin — parse, call, print."""

from __future__ import annotations

import click

from syncengine import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncengine")
def cli() -> None:
    """Offline-first messaging sync engine: inspect and drive the sync state."""


def _register() -> None:
    from syncengine.server.cli import serve

    cli.add_command(serve)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="syncengine")
