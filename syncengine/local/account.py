"""The account of a store as every local process sees it: present, logged in, how to connect."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from syncengine.errors import NotLoggedIn
from syncengine.paths import token_path
from syncengine.store import Store

__all__ = ["engine_options", "open_store", "require_login", "require_store"]


def require_store(db: str | os.PathLike[str]) -> None:
    """Check that a store exists at ``db`` (commands that only read or queue never create one).

    Raises:
        NotLoggedIn: there is no store at ``db``.
    """
    if not Path(db).exists():
        raise NotLoggedIn(f"no store at {db}: run 'syncengine login SERVER_URL USER' first")


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
    account: dict[str, str | None] = store.account()
    if not account.get("user") or not account.get("server"):
        raise NotLoggedIn(f"{db} is not logged in: run 'syncengine login SERVER_URL USER' first")
    if not token_path(db).exists():
        raise NotLoggedIn(
            f"{account['user']} is logged out of {db}: run 'syncengine login "
            f"{account['server']} {account['user']}'"
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
