"""Where syncengine keeps its files by default (platformdirs), and their companions."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["default_db_path", "lock_path", "real_store_path", "token_path"]


def default_db_path() -> Path:
    """``$SYNCENGINE_DB``, else ``<user data dir>/syncengine/syncengine.db``."""
    env = os.environ.get("SYNCENGINE_DB")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("syncengine", appauthor=False)) / "syncengine.db"


def real_store_path(db_path: str | os.PathLike[str]) -> str:
    """The store's real path (symlinks resolved): what its lock, pid and token files sit
    beside, so one store reached through two paths is still one store (one writer: G6)."""
    return os.path.realpath(os.fspath(db_path))


def token_path(db_path: str | os.PathLike[str]) -> Path:
    """The token file beside a store's real path (mode 0600)."""
    return Path(f"{real_store_path(db_path)}.token")


def lock_path(db_path: str | os.PathLike[str]) -> Path:
    """The single-writer lock file beside a store's real path."""
    return Path(f"{real_store_path(db_path)}.lock")
