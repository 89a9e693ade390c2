"""Where syncengine keeps its files by default (platformdirs), and their companions."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["default_db_path", "lock_path", "make_private_dirs", "token_path"]


def default_db_path() -> Path:
    """``$SYNCENGINE_DB``, else ``<user data dir>/syncengine/syncengine.db``."""
    env = os.environ.get("SYNCENGINE_DB")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("syncengine", appauthor=False)) / "syncengine.db"


def make_private_dirs(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and each missing parent with mode 0700, whatever the umask.

    ``mkdir(parents=True, mode=0o700)`` gives only the last folder that mode; the parents it
    creates get the umask's (0777 under ``umask 000``). Here each missing folder is made
    0700; folders that already exist are left as they are (one may be the user's own home).
    Every folder syncengine creates (stores, token and lock files, the server's data
    directory) goes through this.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.
    """
    folder = Path(folder)
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(new, 0o700)  # mkdir's mode passes through the umask
    return folder


def token_path(db_path: str | os.PathLike[str]) -> Path:
    """The token file beside a store (mode 0600)."""
    return Path(f"{db_path}.token")


def lock_path(db_path: str | os.PathLike[str]) -> Path:
    """The daemon's single-instance lock file beside a store."""
    return Path(f"{db_path}.lock")
