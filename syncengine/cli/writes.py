"""Writes: ``create``, ``send``, ``edit``, ``delete``, ``read``, ``react``, ``members``,
``cancel``, ``retry``.

They queue through the engine's public API (:mod:`syncengine.local.writes`) and return;
whichever process syncs the store (the daemon, or a later ``syncengine sync``) pushes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from syncengine.cli.context import run, state
from syncengine.cli.render import console, emit_json
from syncengine.clickutil import OneLineCommand, OneLineUsageError

__all__ = ["cancel", "create", "delete", "edit", "members", "react", "read", "retry", "send"]


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
    "--reply-to",
    "reply_to",
    metavar="MESSAGE_ID",
    default=None,
    help="Reply to this message (server id, or op id of a send not yet acknowledged).",
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
    reply_to: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Queue a message (works offline; at most 16,000 characters).

    TEXT is the message; '-' (or --file PATH) reads it from stdin (or the file), so a long
    message need not fit on the command line. CONVERSATION_ID may be a unique prefix. A
    message is 1 to 16,000 characters (UTF-8 text). With --wait, exit 1 if it is not
    acknowledged in time; it stays queued either way. --reply-to MESSAGE_ID makes it a reply.
    """
    from syncengine.local import queue_send, resolve_conversation, wait_acknowledged

    st = state(ctx)
    body = _body(text, file)
    conversation_id = resolve_conversation(st.db, conversation_id)
    message = run(queue_send(st.db, conversation_id, body, reply_to))
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


@click.command(cls=OneLineCommand, short_help="Queue an edit of your message (works offline).")
@click.argument("message_id")
@click.argument("text")
@click.pass_context
def edit(ctx: click.Context, message_id: str, text: str) -> None:
    """Queue an edit of one of your messages (works offline).

    MESSAGE_ID is the server's message id, or the op id of a send not yet acknowledged.
    TEXT is the new message (1 to 16,000 characters).
    """
    from syncengine.local import queue_edit

    st = state(ctx)
    item = run(queue_edit(st.db, message_id, text))
    _queued(st.json, item.op_id, "Queued edit")


@click.command(cls=OneLineCommand, short_help="Queue the deletion of your message (offline too).")
@click.argument("message_id")
@click.pass_context
def delete(ctx: click.Context, message_id: str) -> None:
    """Queue the deletion of one of your messages (works offline).

    MESSAGE_ID is the server's message id, or the op id of a send not yet acknowledged.
    """
    from syncengine.local import queue_delete

    st = state(ctx)
    item = run(queue_delete(st.db, message_id))
    _queued(st.json, item.op_id, "Queued deletion")


@click.command(cls=OneLineCommand, short_help="Mark a conversation read (works offline).")
@click.argument("conversation_id")
@click.pass_context
def read(ctx: click.Context, conversation_id: str) -> None:
    """Queue a read receipt up to the newest message in the store (works offline).

    CONVERSATION_ID may be a unique prefix.
    """
    from syncengine.local import queue_read, resolve_conversation

    st = state(ctx)
    item = run(queue_read(st.db, resolve_conversation(st.db, conversation_id)))
    _queued(st.json, item.op_id, f"Queued read up to seq {item.payload['seq']}")


@click.command(cls=OneLineCommand, short_help="Cancel an operation not yet sent.")
@click.argument("op_id")
@click.pass_context
def cancel(ctx: click.Context, op_id: str) -> None:
    """Cancel a queued or failed send or creation not yet sent: it and its local echo go away.

    OP_ID may be a unique prefix. An operation already sent (or maybe sent: pushed once
    without an answer) cannot be cancelled; neither can an edit, deletion or read receipt.
    """
    from syncengine.local import cancel_operation, resolve_operations

    st = state(ctx)
    (op_id,) = resolve_operations(st.db, [op_id])
    item = run(cancel_operation(st.db, op_id))
    if st.json:
        emit_json({"cancelled": item.op_id, "kind": item.kind.value})
    else:
        console().print(f"Cancelled {item.kind.value}: {item.op_id}")


@click.command(cls=OneLineCommand, short_help="Show, add or remove members (works offline).")
@click.argument("conversation_id")
@click.option("--add", "add", multiple=True, metavar="USER", help="Add USER (repeatable).")
@click.option(
    "--remove", "remove", multiple=True, metavar="USER", help="Remove USER (repeatable)."
)
@click.pass_context
def members(
    ctx: click.Context, conversation_id: str, add: Sequence[str], remove: Sequence[str]
) -> None:
    """Show a conversation's members; queue additions and removals (works offline).

    CONVERSATION_ID may be a unique prefix. The members shown are the store's: a change
    appears once the server has applied it (after the next sync); a user the server does
    not know fails with 'unknown_user' (see 'outbox').
    """
    from syncengine.local import change_members, open_store, resolve_conversation

    st = state(ctx)
    conversation_id = resolve_conversation(st.db, conversation_id)
    queued = run(change_members(st.db, conversation_id, add, remove)) if add or remove else []
    with open_store(st.db) as store:
        now = list(store.conversation(conversation_id).members)
    if st.json:
        emit_json({"id": conversation_id, "members": now, "queued": [i.op_id for i in queued]})
        return
    console().print(", ".join(now))
    for item in queued:
        console().print(f"Queued {item.kind.value} {item.payload['user']}: {item.op_id}")


@click.command(cls=OneLineCommand, short_help="React to a message (works offline).")
@click.argument("message_id")
@click.argument("emoji")
@click.option("--remove", is_flag=True, help="Take your reaction back.")
@click.pass_context
def react(ctx: click.Context, message_id: str, emoji: str, remove: bool) -> None:
    """Queue your reaction EMOJI to a sent message (works offline), or take it back.

    MESSAGE_ID is the server's message id (a message still pending takes no reaction yet).
    EMOJI is 1 to 32 characters without whitespace.
    """
    from syncengine.local import queue_reaction

    st = state(ctx)
    item = run(queue_reaction(st.db, message_id, emoji, remove))
    _queued(st.json, item.op_id, f"Queued reaction {'removal ' if remove else ''}{emoji}")


def _queued(as_json: bool, op_id: str, what: str) -> None:
    """Report one queued operation: its op id (JSON ``{"op_id"}``) or a line."""
    if as_json:
        emit_json({"op_id": op_id})
    else:
        console().print(f"{what}: {op_id}")


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
