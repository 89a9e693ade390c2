"""``syncengine serve`` (placeholder until the reference server lands)."""

from __future__ import annotations

import click


@click.command()
def serve() -> None:
    """Run the reference server."""
    raise click.ClickException("the reference server is not built yet")
