"""The client side: the public :class:`SyncEngine`, its session, event bus, credentials and
configuration."""

from syncengine.client.config import EngineConfig
from syncengine.client.engine import SyncEngine

__all__ = ["EngineConfig", "SyncEngine"]
