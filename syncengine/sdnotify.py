"""systemd's readiness protocol (``sd_notify``), with the socket module only.

Kept apart from :mod:`syncengine.daemon` so the CLI can report ``STATUS=starting`` the moment
it has taken over SIGTERM, before the daemon's heavier imports: a supervisor (or a test) then
knows from when on a stop request ends in a clean exit.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

log = logging.getLogger("syncengine.daemon")


def notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send a systemd notification (``READY=1``, ``STOPPING=1``, ``STATUS=...``).

    The protocol is one datagram on the unix socket named by ``NOTIFY_SOCKET``; a leading
    ``@`` means the abstract namespace.

    Returns:
        True when a notification was sent, False when no manager listens.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("could not notify the service manager: %s", exc)
        return False
    return True
