"""Former home of :class:`SyncEngine`; it now lives in :mod:`syncengine.client.engine`.

This module re-exports it so existing imports keep working.
"""

from syncengine.client.engine import *  # noqa: F403
from syncengine.client.engine import SyncEngine

__all__ = ["SyncEngine"]
