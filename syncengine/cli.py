"""The ``syncengine`` command line: thin — parse, call, print.

Reads (``status``, ``conversations``, ``messages``, ``outbox``) open the store directly: SQLite
in WAL mode lets them run while a daemon writes. Writes (``create``, ``send``, ``retry``) commit
to the outbox and return; whichever process syncs the store (the daemon, or a later
``syncengine sync``) pushes them. Commands that talk to the server themselves (``sync``,
``send --wait`` and ``tail`` without a daemon) take the store's single-writer lock for as long
as they sync, so they never race a daemon.

Output: rich tables for people; with ``--json`` exactly one JSON document on stdout (JSON lines
for ``tail``), nothing else there. Progress and errors go to stderr. A user mistake is one line
on stderr and exit status 1; a usage error (bad option) exits with 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs
import click

from syncengine import __version__
from syncengine.clickutil import OneLineCommand, OneLineUsageError
from syncengine.errors import (
    AuthFailed,
    StoreLockHeld,
    SyncEngineError,
    TransportError,
    UsageError,
)
from syncengine.models import (
    ConnectionState,
    Conversation,
    Message,
    OpKind,
    OutboxItem,
    OutboxState,
    new_id,
)
from syncengine.paths import default_db_path, token_path

__all__ = ["cli", "main"]

T = TypeVar("T")

#: States that only a running syncing process can be in; recorded by a process that is gone,
#: they are stale (pitfall 10: status must not lie).
_CONNECTED_STATES = {
    ConnectionState.CONNECTING.value,
    ConnectionState.SYNCING.value,
    ConnectionState.LIVE.value,
    ConnectionState.BACKOFF.value,
}


# --- plumbing ---------------------------------------------------------------------------------


class CliError(click.ClickException):
    """A user mistake or an unreachable server: one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def _describe(exc: BaseException) -> str:
    """One human line for an exception the user can act on."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AuthFailed):
        return f"{text} (run 'syncengine login SERVER_URL USER')"
    return text


class _Group(click.Group):
    """The command group: typed errors become one-line messages, never tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        """Invoke the subcommand, translating syncengine's errors."""
        try:
            return super().invoke(ctx)
        except SyncEngineError as exc:
            raise CliError(_describe(exc)) from None
        except PermissionError as exc:
            raise CliError(f"permission denied: {exc.filename or exc}") from None
        except IsADirectoryError as exc:
            raise CliError(f"is a directory: {exc.filename or exc}") from None


@dataclass
class _State:
    """What the group options decided, shared with every command."""

    db: Path
    json: bool


def _state(ctx: click.Context) -> _State:
    obj = ctx.find_root().obj
    assert isinstance(obj, _State)
    return obj


def _console(*, stderr: bool = False) -> Any:
    """A rich console for stdout (or stderr). Rich honours ``NO_COLOR`` by itself; stating it
    again keeps colour off even when a terminal type forces it."""
    from rich.console import Console

    console = Console(
        stderr=stderr,
        highlight=False,
        no_color=bool(os.environ.get("NO_COLOR")) or None,
        soft_wrap=False,
    )
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        # Piped output has no width to fit: do not squeeze ids into 80 columns.
        console.width = 200
    return console


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _require_store(db: Path) -> Any:
    """Open an existing store for reading or queueing (never creates one by mistake)."""
    from syncengine.store import Store

    if not db.exists():
        raise UsageError(f"no store at {db}: run 'syncengine login SERVER_URL USER' first")
    return Store(db)


def _require_login(store: Any, db: Path) -> dict[str, str | None]:
    account: dict[str, str | None] = store.account()
    if not account.get("user") or not account.get("server"):
        raise UsageError(f"{db} is not logged in: run 'syncengine login SERVER_URL USER' first")
    if not token_path(db).exists():
        raise UsageError(
            f"{account['user']} is logged out of {db}: run 'syncengine login "
            f"{account['server']} {account['user']}'"
        )
    return account


# --- serialisation: the JSON keys are the product's interface (docs/cli.md) -------------------


def _conversation_doc(conv: Conversation) -> dict[str, Any]:
    return {
        "id": conv.id,
        "title": conv.title,
        "members": list(conv.members),
        "unread": conv.unread,
    }


def _message_doc(msg: Message) -> dict[str, Any]:
    return {
        "id": msg.id,
        "op_id": msg.op_id,
        "conversation_id": msg.conversation_id,
        "seq": msg.seq,
        "sender": msg.sender,
        "body": msg.body,
        "state": msg.state.value,
        "created_at": msg.created_at,
    }


def _outbox_doc(item: OutboxItem) -> dict[str, Any]:
    return {
        "op_id": item.op_id,
        "kind": item.kind.value,
        "conversation_id": item.conversation_id,
        "state": item.state.value,
        "attempts": item.attempts,
        "last_error": item.last_error,
        "created_at": item.created_at,
    }


def status_doc(db: Path) -> dict[str, Any]:
    """The ``status`` document of a store (see docs/cli.md for the keys).

    ``state`` is the connection state recorded by the process that syncs the store. When no
    process holds the store's lock, a connected state is stale (its writer is gone) and is
    reported as ``offline``.
    """
    from syncengine.daemon import daemon_info

    store = _require_store(db)
    try:
        health = store.health()
        account = store.account()
    finally:
        store.close()
    running, pid = daemon_info(db)
    state = health.state.value
    if not running and state in _CONNECTED_STATES:
        state = ConnectionState.OFFLINE.value
    return {
        "state": state,
        "server": account.get("server"),
        "user": account.get("user"),
        "cursor": health.cursor,
        "last_sync_at": health.last_sync_at,
        "outbox": {"pending": health.pending, "sending": health.sending, "failed": health.failed},
        "oldest_pending_age_s": health.oldest_pending_age_s,
        "conversations": health.conversations,
        "messages": health.messages,
        "daemon": {"running": running, "pid": pid},
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


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


# --- the group ---------------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.obj = _State(db=Path(db) if db is not None else default_db_path(), json=as_json)


# --- account -----------------------------------------------------------------------------------


def _read_password() -> str:
    """``SYNCENGINE_PASSWORD``, else a hidden prompt on a terminal, else stdin's first line."""
    env = os.environ.get("SYNCENGINE_PASSWORD")
    if env:
        return env
    stdin = sys.stdin
    if stdin.isatty():
        return str(click.prompt("Password", hide_input=True, err=True))
    line = stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise UsageError(
            "no password: type it at the prompt, pipe it on stdin, or set SYNCENGINE_PASSWORD"
        )
    return password


@cli.command(cls=OneLineCommand)
@click.argument("server_url")
@click.argument("user")
@click.option("--device", default=None, help="This device's name [default: host name + suffix].")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA bundle to verify the server's certificate with (remembered for this store).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow plain http/ws to a host that is not loopback (remembered for this store).",
)
@click.pass_context
def login(
    ctx: click.Context,
    server_url: str,
    user: str,
    device: str | None,
    ca_file: str | None,
    insecure: bool,
) -> None:
    """Log in to SERVER_URL as USER and keep the token (mode 0600) beside the store.

    The password comes from SYNCENGINE_PASSWORD when set, else from a prompt on a terminal,
    else from the first line of stdin.
    """
    from syncengine.engine import SyncEngine

    st = _state(ctx)
    password = _read_password()
    ca_path = str(Path(ca_file).resolve()) if ca_file else None

    async def go() -> dict[str, Any]:
        engine = SyncEngine(
            st.db, connect=False, device=device, ca_file=ca_path, allow_insecure=insecure
        )
        async with engine:
            await engine.login(server_url, user, password, device=device)
            # Later commands and the daemon connect with the same TLS settings.
            engine.store.set_meta(ca_file=ca_path, allow_insecure="1" if insecure else None)
            return {k: v for k, v in engine.store.account().items()}

    account = _run(go())
    if st.json:
        _emit_json(
            {"server": account["server"], "user": account["user"], "device": account["device"]}
        )
    else:
        _console().print(
            f"Logged in as [bold]{account['user']}[/] on {account['server']} "
            f"(device {account['device']}); store {st.db}"
        )


@cli.command(cls=OneLineCommand)
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Forget the token. Local messages and queued operations are kept."""
    from syncengine.engine import SyncEngine

    st = _state(ctx)
    if not st.db.exists():
        raise UsageError(f"no store at {st.db}: nothing to log out of")
    was_logged_in = token_path(st.db).exists()

    async def go() -> None:
        async with SyncEngine(st.db, connect=False) as engine:
            await engine.logout()

    _run(go())
    if st.json:
        _emit_json({"logged_out": True, "had_token": was_logged_in})
    else:
        _console().print("Logged out." if was_logged_in else "Was not logged in.")


# --- reads -------------------------------------------------------------------------------------


@cli.command(cls=OneLineCommand)
@click.pass_context
def status(ctx: click.Context) -> None:
    """Sync health: connection state, outbox counts, cursor, last sync, daemon."""
    st = _state(ctx)
    doc = status_doc(st.db)
    if st.json:
        _emit_json(doc)
        return
    from rich.table import Table

    outbox = doc["outbox"]
    daemon = doc["daemon"]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    state_style = {"live": "green", "failed": "red", "backoff": "yellow"}.get(doc["state"], "")
    table.add_row("state", f"[{state_style}]{doc['state']}[/]" if state_style else doc["state"])
    table.add_row("account", f"{doc['user'] or '-'} on {doc['server'] or '-'}")
    table.add_row("store", str(st.db))
    table.add_row(
        "daemon", f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    )
    table.add_row("cursor", str(doc["cursor"]))
    table.add_row("last sync", _fmt_time(doc["last_sync_at"]))
    failed = f"[red]{outbox['failed']} failed[/]" if outbox["failed"] else "0 failed"
    table.add_row("outbox", f"{outbox['pending']} pending, {outbox['sending']} sending, {failed}")
    table.add_row("oldest pending", _fmt_age(doc["oldest_pending_age_s"]))
    table.add_row("stored", f"{doc['conversations']} conversations, {doc['messages']} messages")
    _console().print(table)


@cli.command(cls=OneLineCommand)
@click.pass_context
def conversations(ctx: click.Context) -> None:
    """The conversations in the store, with unread counts."""
    st = _state(ctx)
    store = _require_store(st.db)
    try:
        convs = store.conversations()
    finally:
        store.close()
    if st.json:
        _emit_json([_conversation_doc(c) for c in convs])
        return
    from rich.table import Table

    table = Table(title=None if convs else "no conversations yet")
    table.add_column("id", no_wrap=True)
    table.add_column("title")
    table.add_column("members")
    table.add_column("unread", justify="right")
    for c in convs:
        title = f"{c.title} [dim](pending)[/]" if c.pending else c.title
        table.add_row(c.id, title, ", ".join(c.members), str(c.unread) if c.unread else "")
    _console().print(table)


@cli.command(cls=OneLineCommand)
@click.argument("conversation_id")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--before", type=click.IntRange(min=1), default=None, help="Only seq < SEQ.")
@click.pass_context
def messages(ctx: click.Context, conversation_id: str, limit: int, before: int | None) -> None:
    """Messages of a conversation from the store, oldest first (pending ones last)."""
    st = _state(ctx)
    store = _require_store(st.db)
    try:
        if not store.has_conversation(conversation_id):
            raise UsageError(f"no conversation {conversation_id} in {st.db}")
        msgs = store.messages(conversation_id, before=before, limit=limit)
    finally:
        store.close()
    if st.json:
        _emit_json([_message_doc(m) for m in msgs])
        return
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
            str(m.seq) if m.seq is not None else "", _fmt_time(m.created_at), m.sender, body, state
        )
    _console().print(table)


@cli.command(cls=OneLineCommand)
@click.option(
    "--state",
    "state_filter",
    type=click.Choice([s.value for s in OutboxState]),
    default=None,
    help="Only items in this state.",
)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.pass_context
def outbox(ctx: click.Context, state_filter: str | None, limit: int) -> None:
    """Queued operations, oldest first, with attempts and the last error."""
    st = _state(ctx)
    store = _require_store(st.db)
    try:
        items = store.outbox(state_filter, limit=limit)
    finally:
        store.close()
    if st.json:
        _emit_json([_outbox_doc(i) for i in items])
        return
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
            _fmt_time(i.created_at),
            i.last_error or "",
        )
    _console().print(table)


# --- writes ------------------------------------------------------------------------------------


@cli.command(cls=OneLineCommand)
@click.argument("title")
@click.option("--member", "members", multiple=True, help="A member besides you (repeatable).")
@click.pass_context
def create(ctx: click.Context, title: str, members: Sequence[str]) -> None:
    """Queue the creation of a conversation (works offline: send into it at once)."""
    st = _state(ctx)
    store = _require_store(st.db)
    try:
        cid = new_id()
        store.enqueue(OpKind.CREATE_CONVERSATION, cid, {"title": title, "members": list(members)})
    finally:
        store.close()
    if st.json:
        _emit_json({"id": cid})
    else:
        _console().print(f"Queued conversation [bold]{title}[/]: {cid}")


@cli.command(cls=OneLineCommand)
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
    st = _state(ctx)
    store = _require_store(st.db)
    try:
        item, _created = store.enqueue(OpKind.SEND, conversation_id, {"body": text})
    finally:
        store.close()
    if wait:
        _run(_wait_acknowledged(st.db, item.op_id, timeout))
    if st.json:
        _emit_json({"op_id": item.op_id})
    elif wait:
        _console().print(f"Sent (acknowledged by the server): {item.op_id}")
    else:
        _console().print(f"Queued: {item.op_id}")


async def _wait_acknowledged(db: Path, op_id: str, timeout: float) -> None:
    """Wait until ``op_id`` is SENT: pushed by the daemon, or by us when none runs."""
    from syncengine.daemon import StoreLock

    deadline = time.monotonic() + timeout
    lock = StoreLock(db)
    while True:
        try:
            lock.acquire(timeout=0)
        except StoreLockHeld:
            # A daemon (or another CLI sync) owns the store: its loop pushes within ~0.25 s.
            # If that process goes away first, take over and push it ourselves.
            if await _poll_acknowledged(db, op_id, deadline):
                return
            continue
        try:
            left = max(0.1, deadline - time.monotonic())
            await _sync_with_lock(db, left, what=f"operation {op_id}")
        finally:
            lock.release()
        _check_acknowledged(db, op_id)
        return


async def _poll_acknowledged(db: Path, op_id: str, deadline: float) -> bool:
    """Poll the store until ``op_id`` is SENT (True) or no process holds the lock (False).

    Raises:
        CliError: the server refused it, or the deadline passed (it stays queued).
    """
    from syncengine.daemon import daemon_info
    from syncengine.store import Store

    with Store(db) as store:
        checks = 0
        while True:
            item = store.outbox_item(op_id)
            if item is None or item.state is OutboxState.SENT:
                return True  # a missing SENT row was pruned: it was acknowledged long ago
            if item.state is OutboxState.FAILED:
                raise CliError(f"the server rejected {op_id}: {item.last_error}")
            if time.monotonic() >= deadline:
                raise CliError(
                    f"{op_id} not acknowledged in time (the syncing process is "
                    f"{store.health().state.value}); it stays queued"
                )
            checks += 1
            if checks % 10 == 0 and not daemon_info(db)[0]:
                return False
            await asyncio.sleep(0.05)


def _check_acknowledged(db: Path, op_id: str) -> None:
    from syncengine.store import Store

    with Store(db) as store:
        item = store.outbox_item(op_id)
    if item is None or item.state is OutboxState.SENT:
        return
    if item.state is OutboxState.FAILED:
        raise CliError(f"the server rejected {op_id}: {item.last_error}")
    raise CliError(
        f"{op_id} was not acknowledged (it stays queued): {item.last_error or 'deferred'}"
    )


async def _sync_with_lock(
    db: Path,
    timeout: float,
    *,
    what: str = "queued work",
    on_progress: Callable[[Any], None] | None = None,
) -> Any:
    """One push + catch-up by a non-connected engine; the caller holds the store lock.

    Raises:
        CliError: the server could not be reached in time (queued work stays queued).
    """
    from syncengine.daemon import engine_options
    from syncengine.engine import SyncEngine
    from syncengine.store import Store

    with Store(db) as store:
        _require_login(store, db)
        options = engine_options(store)
        # The caller holds the single-writer lock: a SENDING row was left by a process that
        # died mid-push; replay it now rather than after its lease runs out.
        store.recover_sending()
    engine = SyncEngine(db, connect=False, request_timeout_s=min(10.0, timeout), **options)
    async with engine:
        ticker = None
        if on_progress is not None:
            ticker = asyncio.create_task(_tick(engine, on_progress))
        try:
            async with asyncio.timeout(timeout):
                return await engine.sync_once()
        except TimeoutError:
            raise CliError(f"timed out after {timeout:g} s; {what} stays queued") from None
        except TransportError as exc:
            raise CliError(f"{_describe(exc)}; {what} stays queued") from None
        finally:
            if ticker is not None:
                ticker.cancel()


async def _tick(engine: Any, on_progress: Callable[[Any], None]) -> None:
    while True:
        on_progress(engine.store)
        await asyncio.sleep(0.1)


@cli.command(cls=OneLineCommand)
@click.argument("op_ids", nargs=-1)
@click.option("--all", "all_failed", is_flag=True, help="Requeue every failed operation.")
@click.pass_context
def retry(ctx: click.Context, op_ids: Sequence[str], all_failed: bool) -> None:
    """Requeue FAILED operations (named by OP_ID, or --all)."""
    st = _state(ctx)
    if bool(op_ids) == all_failed:
        raise OneLineUsageError("name failed operations by OP_ID, or pass --all (not both)")
    store = _require_store(st.db)
    try:
        ids = store.requeue(None if all_failed else list(op_ids))
    finally:
        store.close()
    if st.json:
        _emit_json({"requeued": ids})
    else:
        _console().print(f"Requeued {len(ids)} operation(s)." if ids else "Nothing to requeue.")


# --- talking to the server ---------------------------------------------------------------------


@cli.command(cls=OneLineCommand)
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
    from syncengine.daemon import StoreLock

    st = _state(ctx)
    store = _require_store(st.db)
    try:
        _require_login(store, st.db)
    finally:
        store.close()
    lock = StoreLock(st.db)
    try:
        lock.acquire(timeout=0)
    except StoreLockHeld as exc:
        doc = _run(_wait_for_daemon(st.db, timeout, exc.pid))
    else:
        try:
            doc = _run(_sync_here(st.db, timeout))
        finally:
            lock.release()
    if st.json:
        _emit_json(doc)
        return
    if doc["daemon"]:
        line = f"Caught up (the daemon syncs this store): cursor {doc['cursor']}."
    else:
        line = (
            f"Caught up: pushed {doc['pushed']}, pulled {doc['pulled']} events; "
            f"cursor {doc['cursor']}."
        )
    if doc["failed"]:
        line += f" [red]{doc['failed']} failed[/]: see 'syncengine outbox --state failed'."
    _console().print(line)


async def _sync_here(db: Path, timeout: float) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from syncengine.daemon import engine_options
    from syncengine.store import Store

    err = _console(stderr=True)
    with Store(db) as store:
        start = store.health()
        options = engine_options(store)
        server = store.get_meta("server") or ""
    head = await _server_head(server, options)
    # Measured in stream positions: the backlog up to the head, plus about one event per
    # operation pushed (each becomes an event that the catch-up pulls back).
    total = max(1, head - start.cursor + start.pending) if head is not None else None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(f"syncing ({start.pending} to push)", total=total)

        def update(store: Any) -> None:
            done = max(0, store.cursor() - start.cursor)
            progress.update(task, completed=min(done, total) if total is not None else done)

        done = await _sync_with_lock(db, timeout, on_progress=update)
    with Store(db) as store:
        health = store.health()
    return {
        "pushed": done.pushed,
        "pulled": done.pulled,
        "cursor": done.cursor,
        "pending": health.pending,
        "failed": health.failed,
        "daemon": False,
    }


async def _server_head(server: str, options: dict[str, Any]) -> int | None:
    """The server's stream head, to size the progress bar (None if unknown)."""
    from syncengine.transport.base import make_ssl_context
    from syncengine.transport.rest import RestTransport

    try:
        ctx = make_ssl_context(options.get("ca_file")) if server.startswith("https") else None
        transport = RestTransport(
            server,
            ssl_context=ctx,
            allow_insecure=bool(options.get("allow_insecure")),
            timeout_s=5.0,
        )
    except SyncEngineError:
        return None
    try:
        health = await transport.health()
    except SyncEngineError:
        return None  # sync_once reports the failure with the right message
    finally:
        await transport.aclose()
    head = health.get("head")
    return head if type(head) is int else None


async def _wait_for_daemon(db: Path, timeout: float, pid: int | None) -> dict[str, Any]:
    """With a daemon syncing the store: wait until it has pushed everything and is LIVE."""
    from syncengine.store import Store

    deadline = time.monotonic() + timeout
    with Store(db) as store:
        while True:
            health = store.health()
            state = health.state
            if state in (ConnectionState.BACKOFF, ConnectionState.FAILED, ConnectionState.OFFLINE):
                raise CliError(
                    f"the daemon (pid {pid}) cannot sync now (state {state.value}); "
                    "queued work stays queued"
                )
            if state is ConnectionState.LIVE and health.pending == 0 and health.sending == 0:
                return {
                    "pushed": None,
                    "pulled": None,
                    "cursor": health.cursor,
                    "pending": 0,
                    "failed": health.failed,
                    "daemon": True,
                }
            if time.monotonic() >= deadline:
                raise CliError(
                    f"the daemon (pid {pid}) did not catch up within {timeout:g} s "
                    f"(state {state.value}, {health.pending} pending)"
                )
            await asyncio.sleep(0.1)


@cli.command(cls=OneLineCommand)
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
    from syncengine.daemon import StoreLock

    st = _state(ctx)
    store = _require_store(st.db)
    try:
        _require_login(store, st.db)
    finally:
        store.close()
    printer = _EventPrinter(as_json=st.json)
    lock = StoreLock(st.db)
    try:
        lock.acquire(timeout=0)
    except StoreLockHeld:
        runner: Coroutine[Any, Any, None] = _tail_store(st.db, printer, count)
        held = False
    else:
        runner = _tail_engine(st.db, printer, count)
        held = True
    try:
        _run(_bounded(runner, timeout))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how tail is meant to end
    finally:
        if held:
            lock.release()


async def _bounded(coro: Coroutine[Any, Any, None], timeout: float | None) -> None:
    try:
        async with asyncio.timeout(timeout):
            await coro
    except TimeoutError:
        pass


class _EventPrinter:
    """Prints events as JSON lines or as short human lines; counts them."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.printed = 0
        self._console = None if as_json else _console()

    def print(self, doc: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(json.dumps(doc, ensure_ascii=False))
            sys.stdout.flush()
        else:
            assert self._console is not None
            self._console.print(_human_event(doc), markup=False, soft_wrap=True)
        self.printed += 1


def _human_event(doc: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S")
    name = doc.get("event", "?")
    if name == "message_received":
        where = f"[{str(doc.get('conversation_id'))[-8:]}] #{doc.get('seq')}"
        return f"{stamp}  {where} {doc.get('sender')}: {doc.get('body')}"
    fields = " ".join(
        f"{k}={v}" for k, v in doc.items() if k != "event" and not isinstance(v, dict | list)
    )
    return f"{stamp}  {name} {fields}".rstrip()


async def _tail_engine(db: Path, printer: _EventPrinter, count: int | None) -> None:
    from syncengine.daemon import engine_options
    from syncengine.engine import SyncEngine
    from syncengine.store import Store

    with Store(db) as store:
        options = engine_options(store)
    async with SyncEngine(db, **options) as engine:
        async for event in engine.events():
            printer.print(event_doc(event))
            if count is not None and printer.printed >= count:
                return


async def _tail_store(db: Path, printer: _EventPrinter, count: int | None) -> None:
    """Poll the store (written by the daemon) for messages that were not there before."""
    from syncengine.store import Store

    with Store(db) as store:
        seen = {c.id: c.last_seq for c in store.conversations()}
        while True:
            for conv in store.conversations():
                last = seen.get(conv.id, 0)
                if conv.last_seq <= last:
                    continue
                for msg in store.messages(conv.id, limit=1000):
                    if msg.seq is None or msg.seq <= last:
                        continue
                    printer.print(
                        {
                            "event": "message_received",
                            "conversation_id": msg.conversation_id,
                            "seq": msg.seq,
                            "message_id": msg.id,
                            "op_id": msg.op_id,
                            "sender": msg.sender,
                            "body": msg.body,
                            "ts_ms": int(msg.created_at * 1000),
                        }
                    )
                    if count is not None and printer.printed >= count:
                        return
                seen[conv.id] = conv.last_seq
            await asyncio.sleep(0.2)


# --- long-running ------------------------------------------------------------------------------


@cli.command(cls=OneLineCommand)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
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

    from syncengine.daemon import DaemonConfig, run_daemon, setup_logging

    st = _state(ctx)
    setup_logging(log_level)
    config = DaemonConfig(
        db_path=st.db, safety_pull_s=safety_pull, prune_after_s=prune_after * 86400
    )
    ctx.exit(run_daemon(config, early_signals=early))


@cli.command(cls=OneLineCommand)
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

    as_json = _state(ctx).json
    ctx.exit(run_demo(n_messages=n_messages, keep=keep, seed=seed, as_json=as_json))


def _register() -> None:
    from syncengine.server.cli import serve

    cli.add_command(serve)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="syncengine")


if __name__ == "__main__":
    main()
