"""A Matrix homeserver (Synapse) behind syncengine's transport seam (see ``docs/matrix.md``).

:class:`MatrixTransport` implements the engine's ``Transport``; its ``connect_live(since)``
returns a :class:`MatrixSyncLink` (a ``LiveLink`` that long-polls ``/sync``). Only
``http.py`` touches httpx; every call runs inside the transports' exception boundary.
"""

from __future__ import annotations

from syncengine.transport.matrix.live import MatrixSyncLink
from syncengine.transport.matrix.transport import MatrixCapabilities, MatrixTransport

__all__ = ["MatrixCapabilities", "MatrixSyncLink", "MatrixTransport"]
