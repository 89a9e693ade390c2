"""What every example shares: the password taken as the CLI takes it, one line per error.

Each example is a script (``.venv/bin/python examples/NAME.py``); Python puts this folder on
``sys.path`` first, so ``from common import ...`` finds this file.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable

from syncengine import SyncEngineError

__all__ = ["DEFAULT_SERVER", "password", "run"]

#: The quickstart's server (``syncengine serve``); SYNCENGINE_SERVER overrides it.
DEFAULT_SERVER = os.environ.get("SYNCENGINE_SERVER", "http://127.0.0.1:8765")


class NoPassword(Exception):
    """No password in the environment, at the prompt or on stdin."""


def password(user: str) -> str:
    """``SYNCENGINE_PASSWORD``, else a hidden prompt on a terminal, else stdin's first line.

    The same order as ``syncengine login``: after the quickstart's
    ``export SYNCENGINE_PASSWORD=alice-secret`` the examples log alice in with no prompt.
    """
    env = os.environ.get("SYNCENGINE_PASSWORD")
    if env:
        return env
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {user}: ")
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise NoPassword(
            "no password: type it at the prompt, pipe it on stdin, or set SYNCENGINE_PASSWORD"
        )
    return line


def run(main: Callable[[], int]) -> None:
    """Run ``main`` and exit with its status; an engine error is one line on stderr (exit 1),
    Ctrl-C exits 130."""
    try:
        code = main()
    except (SyncEngineError, NoPassword) as exc:
        print(f"error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)
