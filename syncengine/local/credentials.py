"""Log a store in and out from a process that does not sync it (the CLI)."""

from __future__ import annotations

import os

from syncengine import SyncEngine
from syncengine.errors import NotLoggedIn
from syncengine.paths import token_path

__all__ = ["login", "logout"]


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

    Raises:
        AuthFailed: the server refused the password. TransportError: it could not be reached.
    """
    engine = SyncEngine(db, connect=False, device=device, ca_file=ca_file, allow_insecure=insecure)
    async with engine:
        if protocol != "auto":
            engine.store.set_meta(protocol=protocol)
        await engine.login(server_url, user, password, device=device)
        engine.store.set_meta(ca_file=ca_file, allow_insecure="1" if insecure else None)
        return {**engine.store.account(), "protocol": engine.store.get_meta("protocol")}


async def logout(db: str | os.PathLike[str]) -> bool:
    """Forget the token; local messages and queued operations are kept.

    Returns:
        Whether there was a token to forget.

    Raises:
        NotLoggedIn: there is no store at ``db``.
    """
    if not os.path.exists(db):
        raise NotLoggedIn(f"no store at {db}: nothing to log out of")
    had_token = token_path(db).exists()
    async with SyncEngine(db, connect=False) as engine:
        await engine.logout()
    return had_token
