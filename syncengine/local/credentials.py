"""Log a store in and out from a process that does not sync it (the CLI)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from syncengine import SyncEngine
from syncengine.errors import NotLoggedIn
from syncengine.local.account import require_writable
from syncengine.paths import lock_path, token_path

__all__ = ["login", "logout"]


def _new_paths(db: Path) -> list[Path]:
    """What a first login may create: the store, its companions, and missing folders."""
    files = [
        db,
        Path(f"{db}-wal"),
        Path(f"{db}-shm"),
        Path(f"{db}-journal"),
        token_path(db),
        lock_path(db),
        Path(f"{db}.pid"),
    ]
    folders = []
    folder = db.parent
    while not folder.exists():
        folders.append(folder)
        folder = folder.parent
    return files + folders  # folders innermost first


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()  # only if empty
            else:
                path.unlink()


async def login(
    db: str | os.PathLike[str],
    server_url: str,
    user: str,
    password: str,
    *,
    device: str | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
    protocol: str = "auto",
) -> dict[str, str | None]:
    """Log in and keep the token (mode 0600) beside the store; returns the account.

    The TLS settings are recorded in the store, so later commands and the daemon connect
    the same way (:func:`~syncengine.local.account.engine_options`), and so is the protocol
    (``matrix`` or ``v1``; ``auto`` asks the server: see ``client/matrix_glue.py``).

    A first login creates nothing that outlives a failure: when it fails (or is interrupted),
    the store, its token and the folders made for them are removed again.

    Raises:
        AuthFailed: the server refused the password. TransportError: it could not be reached.
        UsageError: a malformed URL or argument. StoreError: the store is read-only.
    """
    server_url = server_url.strip()
    path = Path(db)
    if path.exists():
        require_writable(path)
        created: list[Path] = []
    else:
        created = _new_paths(path)
    try:
        engine = SyncEngine(
            db, connect=False, device=device, ca_file=ca_file, allow_insecure=insecure
        )
        async with engine:
            if protocol != "auto":
                engine.store.set_meta(protocol=protocol)
            await engine.login(server_url, user, password, device=device)
            engine.store.set_meta(ca_file=ca_file, allow_insecure="1" if insecure else None)
            return {**engine.store.account(), "protocol": engine.store.get_meta("protocol")}
    except BaseException:
        _remove(created)
        raise


async def logout(db: str | os.PathLike[str]) -> bool:
    """Forget the token; local messages and queued operations are kept.

    Returns:
        Whether there was a token to forget.

    Raises:
        NotLoggedIn: there is no store at ``db``.
    """
    if not os.path.exists(db):
        raise NotLoggedIn(f"no store at {db}: nothing to log out of")
    require_writable(db)
    had_token = token_path(db).exists()
    async with SyncEngine(db, connect=False) as engine:
        await engine.logout()
    return had_token
