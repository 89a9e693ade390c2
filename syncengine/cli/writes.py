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


@click.command(cls=OneLineCommand, short_help="Queue a new conversation (works offline).")
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


@click.command(cls=OneLineCommand, short_help="Queue a message (works offline).")
@click.argument("conversation_id")
@click.argument("text", required=False)
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    default=None,
    help="Read the message from this file ('-' for stdin) instead of TEXT.",
)
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
def send(
    ctx: click.Context,
    conversation_id: str,
    text: str | None,
    file: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Queue a message (works offline; at most 16,000 characters).

    TEXT is the message; '-' (or --file PATH) reads it from stdin (or the file), so a long
    message need not fit on the command line. CONVERSATION_ID may be a unique prefix. A
    message is 1 to 16,000 characters (UTF-8 text). With --wait, exit 1 if it is not
    acknowledged in time; it stays queued either way.
    """
    from syncengine.local import queue_send, resolve_conversation, wait_acknowledged

    st = state(ctx)
    body = _body(text, file)
    conversation_id = resolve_conversation(st.db, conversation_id)
    message = run(queue_send(st.db, conversation_id, body))
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


def _body(text: str | None, file: str | None) -> str:
    """The message: TEXT, or read from stdin ('-') or a file; exactly one of them."""
    if (text is None) == (file is None):
        raise OneLineUsageError("give the message as TEXT, as '-' (stdin) or with --file PATH")
    from syncengine.protocol.ops import MAX_BODY_CHARS  # lazily: the CLI starts fast

    source = file if file is not None else (text if text == "-" else None)
    if source is None:
        assert text is not None
        return text
    try:
        if source == "-":
            data = click.get_binary_stream("stdin").read()
        else:
            with open(source, "rb") as handle:
                data = handle.read(MAX_BODY_CHARS * 4 + 1)
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OneLineUsageError(f"the message in {source} is not UTF-8 text") from None
    # One trailing newline (what echo and editors add) is not part of the message.
    return body[:-1] if body.endswith("\n") else body


@click.command(cls=OneLineCommand, short_help="Requeue failed operations.")
@click.argument("op_ids", nargs=-1)
@click.option("--all", "all_failed", is_flag=True, help="Requeue every failed operation.")
@click.pass_context
def retry(ctx: click.Context, op_ids: Sequence[str], all_failed: bool) -> None:
    """Requeue FAILED operations (named by OP_ID or a unique prefix, or --all)."""
    from syncengine.local import requeue, resolve_operations

    st = state(ctx)
    if bool(op_ids) == all_failed:
        raise OneLineUsageError("name failed operations by OP_ID, or pass --all (not both)")
    named = None if all_failed else resolve_operations(st.db, list(op_ids))
    ids = run(requeue(st.db, named))
    if st.json:
        emit_json({"requeued": ids})
    else:
        console().print(
            f"Requeued {len(ids)} operation{'' if len(ids) == 1 else 's'}."
            if ids
            else "Nothing to requeue."
        )
