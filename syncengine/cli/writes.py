"""Writes: ``create``, ``send``, ``retry``.

They queue through the engine's public API (:mod:`syncengine.local.writes`) and return;
whichever process syncs the store (the daemon, or a later ``syncengine sync``) pushes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from syncengine.cli.context import run, state
from syncengine.cli.render import console, emit_json
from syncengine.clickutil import OneLineCommand, OneLineUsageError

__all__ = ["create", "retry", "send"]


@click.command(cls=OneLineCommand)
@click.argument("title")
@click.option("--member", "members", multiple=True, help="A member besides you (repeatable).")
@click.pass_context
def create(ctx: click.Context, title: str, members: Sequence[str]) -> None:
    """Queue the creation of a conversation (works offline: send into it at once)."""
    from syncengine.local import queue_conversation

    st = state(ctx)
    conv = run(queue_conversation(st.db, title, members))
    if st.json:
        emit_json({"id": conv.id})
    else:
        console().print(f"Queued conversation [bold]{title}[/]: {conv.id}")


@click.command(cls=OneLineCommand)
@click.argument("conversation_id")
@click.argument("text")
@click.option(
    "--wait",
    is_flag=True,
    help="Return once the server acknowledged it (push it now unless a daemon runs).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait with --wait.",
)
@click.pass_context
def send(ctx: click.Context, conversation_id: str, text: str, wait: bool, timeout: float) -> None:
    """Queue a message (works offline). With --wait, exit 1 if it is not acknowledged in time;
    it stays queued either way."""
    from syncengine.local import queue_send, wait_acknowledged

    st = state(ctx)
    message = run(queue_send(st.db, conversation_id, text))
    op_id = message.op_id
    assert op_id is not None  # a local echo always carries the op id that queued it
    if wait:
        run(wait_acknowledged(st.db, op_id, timeout))
    if st.json:
        emit_json({"op_id": op_id})
    elif wait:
        console().print(f"Sent (acknowledged by the server): {op_id}")
    else:
        console().print(f"Queued: {op_id}")


@click.command(cls=OneLineCommand)
@click.argument("op_ids", nargs=-1)
@click.option("--all", "all_failed", is_flag=True, help="Requeue every failed operation.")
@click.pass_context
def retry(ctx: click.Context, op_ids: Sequence[str], all_failed: bool) -> None:
    """Requeue FAILED operations (named by OP_ID, or --all)."""
    from syncengine.local import requeue

    st = state(ctx)
    if bool(op_ids) == all_failed:
        raise OneLineUsageError("name failed operations by OP_ID, or pass --all (not both)")
    ids = run(requeue(st.db, None if all_failed else list(op_ids)))
    if st.json:
        emit_json({"requeued": ids})
    else:
        console().print(f"Requeued {len(ids)} operation(s)." if ids else "Nothing to requeue.")
