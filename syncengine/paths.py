"""Where syncengine keeps its files by default (platformdirs), and their companions."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["default_db_path", "lock_path", "token_path"]


def default_db_path() -> Path:
    """``$SYNCENGINE_DB``, else ``<user data dir>/syncengine/syncengine.db``."""
    env = os.environ.get("SYNCENGINE_DB")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("syncengine", appauthor=False)) / "syncengine.db"


def token_path(db_path: str | os.PathLike[str]) -> Path:
    """The token file beside a store (mode 0600)."""
    return Path(f"{db_path}.token")


def lock_path(db_path: str | os.PathLike[str]) -> Path:
    """The daemon's single-instance lock file beside a store."""
    return Path(f"{db_path}.lock")
