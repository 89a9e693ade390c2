"""The token file beside the store: written atomically, 0600 from its first byte (G8)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

from syncengine.paths import token_path

__all__ = ["forget_token", "load_token", "save_token"]


def load_token(db_path: Path) -> str | None:
    """The saved bearer token of the store at ``db_path``, or None (absent or unreadable)."""
    path = token_path(db_path)
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def save_token(db_path: Path, token: str) -> None:
    """Save ``token`` for the store at ``db_path``: a 0600 temporary file, synced, renamed."""
    path = token_path(db_path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps({"token": token}))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def forget_token(db_path: Path) -> None:
    """Delete the saved token (a missing file is fine)."""
    with contextlib.suppress(FileNotFoundError):
        token_path(db_path).unlink()
