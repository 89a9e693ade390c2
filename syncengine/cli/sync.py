"""Commands that talk to the server: ``sync`` and ``tail``.

Both take the store's single-writer lock for as long as they sync, so they never race a
daemon; while one runs, they defer to it (:mod:`syncengine.local`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from syncengine.cli import render
from syncengine.cli.context import run, state
from syncengine.clickutil import OneLineCommand
from syncengine.models import Message

if TYPE_CHECKING:
    from syncengine.local.sync import SyncProgress

__all__ = ["sync", "tail"]


@click.command(cls=OneLineCommand, short_help="Push queued operations, pull until caught up.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.pass_context
def sync(ctx: click.Context, timeout: float) -> None:
    """Push queued operations, then pull until caught up (exit 1 if the server is away).

    When a daemon runs, wait for it to push the outbox instead of syncing a second time.
    """
    from syncengine.local import sync_store

    st = state(ctx)
    progress, on_progress = _progress_bar()
    with progress:
        outcome = run(sync_store(st.db, timeout, progress=on_progress))
    doc = render.sync_doc(outcome)
    if st.json:
        render.emit_json(doc)
    else:
        render.console().print(render.sync_line(doc, st.db))


def _progress_bar() -> tuple[Any, Callable[[SyncProgress], None] | None]:
    """A transient progress bar on stderr, and its feed; none unless stderr is a terminal.

    Without a terminal nothing is drawn, so nothing is measured either: no ticker runs
    beside the catch-up and ``rich.progress`` is not imported.
    """
    err = render.console(stderr=True)
    if not err.is_terminal:
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    tasks: list[Any] = []

    def update(step: SyncProgress) -> None:
        if not tasks:
            tasks.append(progress.add_task(f"syncing ({step.to_push} to push)", total=step.total))
        progress.update(tasks[0], completed=step.done)

    return progress, update


@click.command(cls=OneLineCommand, short_help="Print events as they are applied (Ctrl-C stops).")
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="Stop after this many events."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds.",
)
@click.pass_context
def tail(ctx: click.Context, count: int | None, timeout: float | None) -> None:
    """Print events as they are applied, until interrupted (Ctrl-C).

    Without a daemon, tail syncs the store itself (a live connection) and prints every event.
    While a daemon syncs the store, tail reads the store instead and prints new messages.
    """
    from syncengine.local import daemon_info, open_store, require_login

    st = state(ctx)
    with open_store(st.db) as store:
        require_login(store, st.db)
    _running, pid = daemon_info(st.db)
    who = f"a daemon (pid {pid})" if pid else "another process"

    def following() -> None:
        # Said once tail has noted what the store holds: every message stored from now on is
        # printed (stdout stays JSON lines only; this is the caller's readiness signal).
        click.echo(
            f"{who} syncs this store: showing new messages only (without a daemon, tail "
            "shows every event)",
            err=True,
        )

    printer = render.EventPrinter(as_json=st.json)
    try:
        run(_print_events(st.db, printer, count, timeout, following))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how tail is meant to end


async def _print_events(
    db: Any,
    printer: render.EventPrinter,
    count: int | None,
    timeout: float | None,
    following: Callable[[], None],
) -> None:
    from syncengine.local import tail as follow

    events = follow(db, following=following)
    try:
        async with asyncio.timeout(timeout):
            async for item in events:
                doc = (
                    render.message_event_doc(item)
                    if isinstance(item, Message)
                    else render.event_doc(item)
                )
                printer.print(doc)
                if count is not None and printer.printed >= count:
                    return
    except TimeoutError:
        pass
    finally:
        await events.aclose()  # releases the store's lock if tail took it
