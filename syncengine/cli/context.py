"""What every command shares: the group's options, the error type, running a coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from syncengine.errors import AuthFailed, SyncEngineError

__all__ = ["CliError", "CliGroup", "State", "describe", "run", "state"]

T = TypeVar("T")


class CliError(click.ClickException):
    """A user mistake or an unreachable server: one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def describe(exc: BaseException) -> str:
    """One human line for an exception the user can act on."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AuthFailed):
        return f"{text} (run 'syncengine login SERVER_URL USER')"
    return text


class CliGroup(click.Group):
    """The command group: typed errors become one-line messages, never tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        """Invoke the subcommand, translating syncengine's errors."""
        try:
            return super().invoke(ctx)
        except SyncEngineError as exc:
            raise CliError(describe(exc)) from None
        except PermissionError as exc:
            raise CliError(f"permission denied: {exc.filename or exc}") from None
        except IsADirectoryError as exc:
            raise CliError(f"is a directory: {exc.filename or exc}") from None


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
