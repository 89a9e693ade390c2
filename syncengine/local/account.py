"""The account of a store as every local process sees it: present, logged in, how to connect."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from syncengine.errors import NotLoggedIn, StoreError
from syncengine.paths import cli_command, token_path
from syncengine.store import Store

__all__ = [
    "engine_options",
    "login_hint",
    "open_store",
    "require_account",
    "require_login",
    "require_store",
    "require_writable",
]


def login_hint(
    db: str | os.PathLike[str], server: str | None = None, user: str | None = None
) -> str:
    """The ``login`` command for this store, ready to paste (``--db`` included when needed)."""
    return cli_command(db, "login", server or "SERVER_URL", user or "USER")


def require_store(db: str | os.PathLike[str]) -> None:
    """Check that a store exists at ``db`` (commands that only read or queue never create one).

    Raises:
        NotLoggedIn: there is no store at ``db``.
    """
    if not Path(db).exists():
        raise NotLoggedIn(f"not logged in (no store at {db}): run '{login_hint(db)}'")


def require_writable(db: str | os.PathLike[str]) -> None:
    """Refuse to write to a store its owner made read-only (no ``u+w`` bit, or no access).

    The mode bits are read rather than trusted to the kernel: root writes through 0444.

    Raises:
        StoreError: the store is read-only.
    """
    try:
        mode = stat.S_IMODE(os.stat(db).st_mode)
    except FileNotFoundError:
        return
    if not mode & stat.S_IWUSR or not os.access(db, os.W_OK):
        raise StoreError(
            f"{db} is read-only (mode {mode:04o}): read commands work, writes are refused; "
            f"'chmod u+w {db}' allows them"
        )


def require_account(store: Store, db: str | os.PathLike[str]) -> dict[str, str | None]:
    """The store's account, which must have been recorded by a successful login.

    Raises:
        NotLoggedIn: no login ever succeeded with this store.
    """
    account: dict[str, str | None] = store.account()
    if not account.get("user") or not account.get("server"):
        raise NotLoggedIn(f"not logged in: run '{login_hint(db)}'")
    return account


def open_store(db: str | os.PathLike[str]) -> Store:
    """Open an existing store for reading or queueing (never creates one by mistake).

    Raises:
        NotLoggedIn: there is no store at ``db``.
        StoreCorrupt, SchemaTooNew: the file cannot be used (it is left untouched).
    """
    require_store(db)
    return Store(db)


def require_login(store: Store, db: str | os.PathLike[str]) -> dict[str, str | None]:
    """The store's account, which must be logged in and hold a token.

    Raises:
        NotLoggedIn: no account was ever recorded, or the token was removed (logout).
    """
    account = require_account(store, db)
    if not token_path(db).exists():
        raise NotLoggedIn(
            f"{account['user']} is logged out of {db}: run "
            f"'{login_hint(db, account['server'], account['user'])}'"
        )
    return account


def engine_options(store: Store) -> dict[str, Any]:
    """The connection options recorded by ``syncengine login`` (CA file, insecure)."""
    options: dict[str, Any] = {}
    ca_file = store.get_meta("ca_file")
    if ca_file:
        options["ca_file"] = ca_file
    if store.get_meta("allow_insecure") == "1":
        options["allow_insecure"] = True
    return options
