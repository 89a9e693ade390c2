"""Where syncengine keeps its files by default (platformdirs), and their companions."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import platformdirs

__all__ = [
    "cli_command",
    "default_db_path",
    "lock_path",
    "make_private_dirs",
    "platform_db_path",
    "token_path",
]


def platform_db_path() -> Path:
    """``<user data dir>/syncengine/syncengine.db``: the store when neither --db nor
    SYNCENGINE_DB names one."""
    return Path(platformdirs.user_data_dir("syncengine", appauthor=False)) / "syncengine.db"


def default_db_path() -> Path:
    """``$SYNCENGINE_DB``, else ``<user data dir>/syncengine/syncengine.db``."""
    env = os.environ.get("SYNCENGINE_DB")
    if env:
        return Path(env)
    return platform_db_path()


def cli_command(db: str | os.PathLike[str] | None, *args: str) -> str:
    """A ``syncengine`` command line for a hint, that works when pasted into a shell.

    It carries ``--db`` unless ``db`` is the platform's default store (an exported
    SYNCENGINE_DB is not assumed: the hint may be pasted in another shell). Placeholders in
    capitals (``SERVER_URL``) are left as they are.
    """
    words = ["syncengine"]
    if db is not None and not _same_file(Path(db), platform_db_path()):
        words += ["--db", str(db)]
    words += list(args)
    return shlex.join(words)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().resolve() == b.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False


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
