"""What every command shares: the group's options, the error type, running a coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from syncengine.clickutil import OneLineUsageError
from syncengine.errors import AuthFailed, SyncEngineError

__all__ = [
    "GLOBAL_FLAGS",
    "GLOBAL_VALUED",
    "CliError",
    "CliGroup",
    "Interrupted",
    "State",
    "describe",
    "hoist_global_options",
    "run",
    "state",
]

T = TypeVar("T")

#: The group's options that may also be given after the command name (same meaning).
GLOBAL_VALUED = ("--db",)
GLOBAL_FLAGS = ("--json",)


class CliError(click.ClickException):
    """A user mistake or an unreachable server: one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class Interrupted(click.ClickException):
    """Ctrl-C: one line saying what was kept, exit status 130 (128 + SIGINT)."""

    exit_code = 130

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def show(self, file: Any = None) -> None:
        click.echo(f"Interrupted: {self.format_message()}", err=True)


def describe(exc: BaseException, db: Path | None = None, command: str | None = None) -> str:
    """One human line for an exception the user can act on."""
    from syncengine.transport.boundary import explain

    text = explain(exc)
    if isinstance(exc, AuthFailed) and command != "login":
        from syncengine.local.account import login_hint

        server = user = None
        if db is not None and db.exists():
            try:
                from syncengine.store import Store

                with Store(db) as store:
                    account = store.account()
                server, user = account.get("server"), account.get("user")
            except (SyncEngineError, OSError):
                pass
        return f"{text} (run '{login_hint(db, server, user)}')"
    return text


def hoist_global_options(args: list[str]) -> list[str]:
    """Move ``--db PATH``/``--db=PATH``/``--json`` given after the command name before it.

    ``syncengine status --json`` then means ``syncengine --json status``. Nothing after a
    ``--`` is touched (``syncengine send CONV -- --json`` sends the text ``--json``).
    """
    i = 0
    while i < len(args):  # skip the group's own options to find the command name
        arg = args[i]
        if arg == "--":
            return args
        if arg in GLOBAL_VALUED:
            i += 2
            continue
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
    else:
        return args
    head, command, rest = args[:i], args[i], args[i + 1 :]
    hoisted: list[str] = []
    kept: list[str] = []
    j = 0
    while j < len(rest):
        arg = rest[j]
        if arg == "--":
            kept.extend(rest[j:])
            break
        if arg in GLOBAL_VALUED and j + 1 < len(rest):
            hoisted += rest[j : j + 2]
            j += 2
            continue
        if arg in GLOBAL_FLAGS or any(arg.startswith(f"{opt}=") for opt in GLOBAL_VALUED):
            hoisted.append(arg)
        else:
            kept.append(arg)
        j += 1
    return [*head, *hoisted, command, *kept]


def check_text(args: list[str]) -> None:
    """Refuse an argument that is not valid text (bytes that are not UTF-8 on the command
    line): exit 2, one line, before anything is opened or sent."""
    for n, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise OneLineUsageError(f"argument {n} ({shown}) is not valid UTF-8") from None


class CliGroup(click.Group):
    """The command group: global options anywhere, typed errors as one-line messages."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Accept ``--db``/``--json`` after the command name too; refuse non-UTF-8 args."""
        check_text(args)
        return super().parse_args(ctx, hoist_global_options(args))

    def invoke(self, ctx: click.Context) -> Any:
        """Invoke the subcommand, translating syncengine's errors."""
        obj = ctx.obj
        try:
            return super().invoke(ctx)
        except SyncEngineError as exc:
            st = ctx.obj if isinstance(ctx.obj, State) else obj
            db = st.db if isinstance(st, State) else None
            raise CliError(describe(exc, db, ctx.invoked_subcommand)) from None
        except PermissionError as exc:
            raise CliError(f"permission denied: {exc.filename or exc}") from None
        except IsADirectoryError as exc:
            raise CliError(f"is a directory: {exc.filename or exc}") from None
        except KeyboardInterrupt:
            raise Interrupted(_kept_line(ctx)) from None


def _kept_line(ctx: click.Context) -> str:
    """What an interrupted command leaves behind, in one line."""
    name = ctx.invoked_subcommand
    if name == "login":
        return "nothing was changed (no login, no store created)"
    if name in ("sync", "tail"):
        return "everything already synced is kept; queued work stays queued for the next sync"
    if name in ("send", "create", "retry"):
        return "what was queued before Ctrl-C stays queued"
    return "the store was left as it was"


@dataclass
class State:
    """What the group options decided, shared with every command."""

    db: Path
    json: bool


def state(ctx: click.Context) -> State:
    """The group's :class:`State`."""
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a new event loop (each command is one short program)."""
    return asyncio.run(coro)
