"""What the CLI prints: JSON documents (the product's interface, see docs/cli.md) and tables.

Nothing here reads the store or talks to a server: every function turns values the commands
got from :mod:`syncengine.local` or the store into a document or a rich renderable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import attrs
import click

from syncengine.models import Conversation, Message, OutboxItem

if TYPE_CHECKING:  # the CLI imports the engine only when a command needs it
    from syncengine.local.status import StoreStatus
    from syncengine.local.sync import SyncOutcome

__all__ = [
    "EventPrinter",
    "console",
    "conversation_doc",
    "conversations_table",
    "emit_json",
    "event_doc",
    "fmt_age",
    "fmt_time",
    "human_event",
    "message_doc",
    "message_event_doc",
    "messages_table",
    "outbox_doc",
    "outbox_table",
    "status_doc_of",
    "status_table",
    "sync_doc",
    "sync_line",
]


# --- plumbing ----------------------------------------------------------------------------------


def console(*, stderr: bool = False) -> Any:
    """A rich console for stdout (or stderr). Rich honours ``NO_COLOR`` by itself; stating it
    again keeps colour off even when a terminal type forces it."""
    from rich.console import Console

    out = Console(
        stderr=stderr,
        highlight=False,
        no_color=bool(os.environ.get("NO_COLOR")) or None,
        soft_wrap=False,
    )
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        # Piped output has no width to fit: do not squeeze ids into 80 columns.
        out.width = 200
    return out


def plural(n: int, word: str) -> str:
    """``1 conversation``, ``2 conversations``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def is_tty() -> bool:
    """Whether stdout is a terminal (rich's view: FORCE_COLOR and TTY_COMPATIBLE count)."""
    return bool(console().is_terminal)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return " ".join(text.replace("\t", " ").splitlines()) if text else ""


def emit_tsv(header: list[str], rows: list[list[Any]]) -> None:
    """A table for a pipe: a header row, then one tab-separated line per row (as ``gh``)."""
    lines = ["\t".join(header), *("\t".join(_cell(v) for v in row) for row in rows)]
    click.echo("\n".join(lines))


def show(table: Any, rows: tuple[list[str], list[list[Any]]]) -> None:
    """A rich table on a terminal; tab-separated lines with a header row in a pipe."""
    out = console()
    if out.is_terminal:
        out.print(table)
    else:
        emit_tsv(*rows)


def emit_json(doc: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(doc, ensure_ascii=False))


def fmt_time(ts: float | None) -> str:
    """A local date and time, or ``-``."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_age(seconds: float | None) -> str:
    """An age in the unit that reads best (s, min, h), or ``-``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- JSON documents ------------------------------------------------------------------------------


def conversation_doc(conv: Conversation) -> dict[str, Any]:
    """A conversation as ``syncengine conversations --json`` prints it."""
    return {
        "id": conv.id,
        "title": conv.title,
        "members": list(conv.members),
        "unread": conv.unread,
    }


def message_doc(msg: Message) -> dict[str, Any]:
    """A message as ``syncengine messages --json`` prints it."""
    return {
        "id": msg.id,
        "op_id": msg.op_id,
        "conversation_id": msg.conversation_id,
        "seq": msg.seq,
        "sender": msg.sender,
        "body": msg.body,
        "state": msg.state.value,
        "created_at": msg.created_at,
        "edited": msg.edited_at is not None,
        "deleted": msg.deleted,
        "reply_to": msg.reply_to,
        "reactions": {emoji: list(users) for emoji, users in sorted(msg.reactions.items())},
        "read_by": list(msg.read_by),
    }


def outbox_doc(item: OutboxItem) -> dict[str, Any]:
    """An outbox item as ``syncengine outbox --json`` prints it."""
    return {
        "op_id": item.op_id,
        "kind": item.kind.value,
        "conversation_id": item.conversation_id,
        "state": item.state.value,
        "attempts": item.attempts,
        "last_error": item.last_error,
        "created_at": item.created_at,
    }


def status_doc_of(status: StoreStatus) -> dict[str, Any]:
    """The ``status`` document (see docs/cli.md for the keys)."""
    health = status.health
    return {
        "state": status.state.value,
        "server": status.account.get("server"),
        "user": status.account.get("user"),
        "cursor": health.cursor,
        "last_sync_at": health.last_sync_at,
        "outbox": {"pending": health.pending, "sending": health.sending, "failed": health.failed},
        "oldest_pending_age_s": health.oldest_pending_age_s,
        "conversations": health.conversations,
        "messages": health.messages,
        "daemon": {"running": status.daemon_running, "pid": status.daemon_pid},
    }


def sync_doc(outcome: SyncOutcome) -> dict[str, Any]:
    """The ``sync`` document."""
    return {
        "pushed": outcome.pushed,
        "pulled": outcome.pulled,
        "cursor": outcome.cursor,
        "pending": outcome.pending,
        "failed": outcome.failed,
        "daemon": outcome.daemon,
    }


def event_doc(event: Any) -> dict[str, Any]:
    """An engine or server event as a JSON-ready dict with its name under ``event``."""
    name = getattr(event, "type", "") or _snake(type(event).__name__)

    def value(_inst: Any, _field: Any, v: Any) -> Any:
        if hasattr(v, "value") and isinstance(v.value, str):
            return v.value
        if isinstance(v, tuple):
            return list(v)
        return v

    doc = attrs.asdict(event, value_serializer=value)
    return {"event": name, **doc}


def message_event_doc(msg: Message) -> dict[str, Any]:
    """A message found in the store, printed by ``tail`` as a ``message_received`` event."""
    return {
        "event": "message_received",
        "conversation_id": msg.conversation_id,
        "seq": msg.seq,
        "message_id": msg.id,
        "op_id": msg.op_id,
        "sender": msg.sender,
        "body": msg.body,
        "ts_ms": int(msg.created_at * 1000),
    }


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


# --- human output --------------------------------------------------------------------------------


def status_table(doc: dict[str, Any], db: Any) -> Any:
    """The ``status`` document as a two-column table."""
    from rich.table import Table

    outbox = doc["outbox"]
    daemon = doc["daemon"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    state_style = {"live": "green", "failed": "red", "backoff": "yellow"}.get(doc["state"], "")
    table.add_row("state", f"[{state_style}]{doc['state']}[/]" if state_style else doc["state"])
    table.add_row("account", f"{doc['user'] or '-'} on {doc['server'] or '-'}")
    table.add_row("store", str(db))
    table.add_row(
        "daemon", f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    )
    table.add_row("cursor", str(doc["cursor"]))
    table.add_row("last sync", fmt_time(doc["last_sync_at"]))
    failed = f"[red]{outbox['failed']} failed[/]" if outbox["failed"] else "0 failed"
    table.add_row("outbox", f"{outbox['pending']} pending, {outbox['sending']} sending, {failed}")
    table.add_row("oldest pending", fmt_age(doc["oldest_pending_age_s"]))
    table.add_row("stored", stored_line(doc))
    return table


def stored_line(doc: dict[str, Any]) -> str:
    """``1 conversation, 2 messages``."""
    return f"{plural(doc['conversations'], 'conversation')}, {plural(doc['messages'], 'message')}"


def status_rows(doc: dict[str, Any], db: Any) -> tuple[list[str], list[list[Any]]]:
    """The ``status`` document as ``field``/``value`` rows, for a pipe."""
    outbox = doc["outbox"]
    daemon = doc["daemon"]
    rows: list[list[Any]] = [
        ["state", doc["state"]],
        ["account", f"{doc['user'] or '-'} on {doc['server'] or '-'}"],
        ["store", db],
        ["daemon", f"running (pid {daemon['pid']})" if daemon["running"] else "not running"],
        ["cursor", doc["cursor"]],
        ["last sync", fmt_time(doc["last_sync_at"])],
        [
            "outbox",
            f"{outbox['pending']} pending, {outbox['sending']} sending, {outbox['failed']} failed",
        ],
        ["oldest pending", fmt_age(doc["oldest_pending_age_s"])],
        ["stored", stored_line(doc)],
    ]
    return ["field", "value"], rows


def conversations_rows(convs: list[Conversation]) -> tuple[list[str], list[list[Any]]]:
    """Conversations as rows, for a pipe."""
    rows = [
        [c.id, c.title, ",".join(c.members), c.unread, "pending" if c.pending else ""]
        for c in convs
    ]
    return ["id", "title", "members", "unread", "state"], rows


def messages_rows(msgs: list[Message]) -> tuple[list[str], list[list[Any]]]:
    """Messages as rows, for a pipe."""
    rows = [
        [
            m.seq if m.seq is not None else "",
            fmt_time(m.created_at),
            m.sender,
            "" if m.deleted else m.body,
            m.state.value,
        ]
        for m in msgs
    ]
    return ["seq", "time", "sender", "message", "state"], rows


def outbox_rows(items: list[OutboxItem]) -> tuple[list[str], list[list[Any]]]:
    """Outbox items as rows, for a pipe."""
    rows = [
        [i.op_id, i.kind.value, i.state.value, i.attempts, fmt_time(i.created_at), i.last_error]
        for i in items
    ]
    return ["op_id", "kind", "state", "attempts", "queued", "last_error"], rows


def conversations_table(convs: list[Conversation]) -> Any:
    """Conversations with members and unread counts."""
    from rich.table import Table

    table = Table(title=None if convs else "no conversations yet")
    table.add_column("id", no_wrap=True)
    table.add_column("title")
    table.add_column("members")
    table.add_column("unread", justify="right")
    for c in convs:
        title = f"{c.title} [dim](pending)[/]" if c.pending else c.title
        table.add_row(c.id, title, ", ".join(c.members), str(c.unread) if c.unread else "")
    return table


def messages_table(msgs: list[Message]) -> Any:
    """Messages oldest first, pending and failed ones marked."""
    from rich.table import Table

    table = Table()
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("sender", no_wrap=True)
    table.add_column("message", overflow="fold")
    table.add_column("state", no_wrap=True)
    for m in msgs:
        body = "[dim](deleted)[/]" if m.deleted else m.body
        state = {"pending": "[yellow]pending[/]", "failed": "[red]failed[/]"}.get(m.state.value, "")
        table.add_row(
            str(m.seq) if m.seq is not None else "", fmt_time(m.created_at), m.sender, body, state
        )
    return table


def outbox_table(items: list[OutboxItem]) -> Any:
    """Outbox items with attempts and their last error."""
    from rich.table import Table

    table = Table(title=None if items else "the outbox is empty")
    table.add_column("op_id", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("queued", no_wrap=True)
    table.add_column("last error", overflow="fold")
    for i in items:
        state = {"failed": "[red]failed[/]", "pending": "[yellow]pending[/]"}.get(
            i.state.value, i.state.value
        )
        table.add_row(
            i.op_id,
            i.kind.value,
            state,
            str(i.attempts),
            fmt_time(i.created_at),
            i.last_error or "",
        )
    return table


def sync_line(doc: dict[str, Any], db: Any = None) -> str:
    """One human line for the ``sync`` document (its hint carries ``--db`` when needed)."""
    from syncengine.paths import cli_command

    if doc["daemon"]:
        line = f"Caught up (the daemon syncs this store): cursor {doc['cursor']}."
    else:
        line = (
            f"Caught up: pushed {doc['pushed']}, pulled {doc['pulled']} events; "
            f"cursor {doc['cursor']}."
        )
    if doc["failed"]:
        hint = cli_command(db, "outbox", "--state", "failed")
        line += f" [red]{doc['failed']} failed[/]: see '{hint}'."
    return line


def human_event(doc: dict[str, Any]) -> str:
    """One short line for an event document."""
    stamp = time.strftime("%H:%M:%S")
    name = doc.get("event", "?")
    if name == "message_received":
        where = f"[{doc.get('conversation_id')}] #{doc.get('seq')}"
        return f"{stamp}  {where} {doc.get('sender')}: {doc.get('body')}"
    fields = " ".join(
        f"{k}={v}" for k, v in doc.items() if k != "event" and not isinstance(v, dict | list)
    )
    return f"{stamp}  {name} {fields}".rstrip()


class EventPrinter:
    """Prints events as JSON lines or as short human lines; counts them."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.printed = 0
        self._console = None if as_json else console()

    def print(self, doc: dict[str, Any]) -> None:
        """Print one event document."""
        if self.as_json:
            click.echo(json.dumps(doc, ensure_ascii=False))
            sys.stdout.flush()
        else:
            assert self._console is not None
            self._console.print(human_event(doc), markup=False, soft_wrap=True)
        self.printed += 1
