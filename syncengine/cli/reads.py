"""Reads: ``status``, ``conversations``, ``messages``, ``outbox``.

They open the store directly: SQLite in WAL mode lets them run while a daemon writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from syncengine.cli import render
from syncengine.cli.context import state
from syncengine.clickutil import OneLineCommand
from syncengine.errors import UsageError
from syncengine.models import OutboxState

__all__ = ["conversations", "messages", "outbox", "status", "status_doc"]


def status_doc(db: Path) -> dict[str, Any]:
    """The ``status`` document of a store (see docs/cli.md for the keys).

    ``state`` is the connection state recorded by the process that syncs the store. When no
    process holds the store's lock, a connected state is stale (its writer is gone) and is
    reported as ``offline``.
    """
    from syncengine.local import store_status

    return render.status_doc_of(store_status(db))


@click.command(cls=OneLineCommand, short_help="Sync health: state, outbox, cursor, daemon.")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Sync health: connection state, outbox counts, cursor, last sync, daemon."""
    st = state(ctx)
    doc = status_doc(st.db)
    if st.json:
        render.emit_json(doc)
    else:
        render.show(render.status_table(doc, st.db), render.status_rows(doc, st.db))


@click.command(cls=OneLineCommand)
@click.pass_context
def conversations(ctx: click.Context) -> None:
    """The conversations in the store, with unread counts."""
    from syncengine.local import open_store, require_account

    st = state(ctx)
    with open_store(st.db) as store:
        require_account(store, st.db)
        convs = store.conversations()
    if st.json:
        render.emit_json([render.conversation_doc(c) for c in convs])
    else:
        render.show(render.conversations_table(convs), render.conversations_rows(convs))


@click.command(cls=OneLineCommand, short_help="Messages of a conversation, oldest first.")
@click.argument("conversation_id")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many messages (the newest ones).",
)
@click.option("--before", type=click.IntRange(min=1), default=None, help="Only seq < SEQ.")
@click.pass_context
def messages(ctx: click.Context, conversation_id: str, limit: int, before: int | None) -> None:
    """Messages of a conversation from the store, oldest first (pending ones last).

    CONVERSATION_ID may be a unique prefix of the id (as git takes commit ids).
    """
    from syncengine.local import open_store, require_account, resolve_conversation

    st = state(ctx)
    conversation_id = resolve_conversation(st.db, conversation_id)
    with open_store(st.db) as store:
        require_account(store, st.db)
        if not store.has_conversation(conversation_id):
            raise UsageError(f"no conversation {conversation_id} in {st.db}")
        msgs = store.messages(conversation_id, before=before, limit=limit)
    if st.json:
        render.emit_json([render.message_doc(m) for m in msgs])
    else:
        render.show(render.messages_table(msgs), render.messages_rows(msgs))


@click.command(cls=OneLineCommand, short_help="Queued operations, attempts, last error.")
@click.option(
    "--state",
    "state_filter",
    type=click.Choice([s.value for s in OutboxState]),
    default=None,
    help="Only items in this state.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="At most this many operations.",
)
@click.pass_context
def outbox(ctx: click.Context, state_filter: str | None, limit: int) -> None:
    """Queued operations, oldest first, with attempts and the last error."""
    from syncengine.local import open_store, require_account

    st = state(ctx)
    with open_store(st.db) as store:
        require_account(store, st.db)
        items = store.outbox(state_filter, limit=limit)
    if st.json:
        render.emit_json([render.outbox_doc(i) for i in items])
    else:
        render.show(render.outbox_table(items), render.outbox_rows(items))
