"""Long-running commands: ``daemon`` and ``demo``."""

from __future__ import annotations

from typing import NoReturn

import click

from syncengine.cli.context import state
from syncengine.clickutil import OneLineCommand

__all__ = ["daemon", "demo"]


@click.command(cls=OneLineCommand, short_help="Sync the store in the foreground.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Least severe log lines written (JSON lines on stderr).",
)
@click.option(
    "--safety-pull",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds between safety-net pulls while live.",
)
@click.option(
    "--prune-after",
    type=click.FloatRange(min=0),
    default=7.0,
    show_default=True,
    help="Days after which sent operations are pruned from the outbox.",
)
@click.pass_context
def daemon(ctx: click.Context, log_level: str, safety_pull: float, prune_after: float) -> NoReturn:
    """Sync the store in the foreground until SIGTERM/SIGINT (one daemon per store).

    Exit status: 0 stopped cleanly, 1 not logged in or sync stopped, 65 damaged store,
    75 another process already syncs this store.
    """
    # Catch SIGTERM/SIGINT before the heavier imports below: a stop requested while the
    # daemon starts up must still end in a clean exit 0 (systemd may stop it at any time).
    import signal

    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    from syncengine.sdnotify import notify

    # From here on a stop is a clean exit: say so, so a supervisor knows the window is closed.
    notify("STATUS=starting")

    from syncengine.daemon import DaemonConfig, run_daemon, setup_logging

    st = state(ctx)
    setup_logging(log_level)
    config = DaemonConfig(
        db_path=st.db, safety_pull_s=safety_pull, prune_after_s=prune_after * 86400
    )
    ctx.exit(run_daemon(config, early_signals=early))


@click.command(cls=OneLineCommand, short_help="Two users chat, go offline, converge.")
@click.option(
    "--messages",
    "n_messages",
    type=click.IntRange(min=4, max=10_000),
    default=24,
    show_default=True,
    help="How many messages the two users exchange in all.",
)
@click.option("--keep", is_flag=True, help="Keep the two stores and print their --db paths.")
@click.option("--seed", type=int, default=None, help="Seed of the demo's choices.")
@click.pass_context
def demo(ctx: click.Context, n_messages: int, keep: bool, seed: int | None) -> NoReturn:
    """Play two users chatting live, offline and back, and check that they converge.

    Runs the reference server in-process on a free loopback port, with stores in a
    temporary folder. Exit status 0 only when both stores equal the server's messages.
    With --json, the story goes to stderr and the figures to stdout as one JSON document.
    """
    from syncengine.demo import run_demo

    as_json = state(ctx).json
    ctx.exit(run_demo(n_messages=n_messages, keep=keep, seed=seed, as_json=as_json))
