"""The engine's settings: one frozen value built from :class:`SyncEngine`'s keyword arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from syncengine.core.schedule import SyncSettings

if TYPE_CHECKING:
    from syncengine.transport.base import Transport

__all__ = ["EngineConfig"]


@attrs.frozen(kw_only=True)
class EngineConfig:
    """Everything :class:`~syncengine.SyncEngine` was configured with, read-only.

    The fields are the engine's keyword arguments, with the same names and defaults except
    ``live`` (here ``use_live``); see :class:`~syncengine.SyncEngine` for their meaning.
    """

    server: str | None = None
    ca_file: str | None = None
    allow_insecure: bool = False
    connect: bool = True
    use_live: bool = True
    device: str | None = None
    push_batch: int = 500
    page_size: int = 500
    poll_interval_s: float = 5.0
    safety_pull_s: float = 30.0
    heartbeat_interval_s: float = 2.0
    heartbeat_timeout_s: float = 3.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    live_url: str | None = None
    request_timeout_s: float = 10.0
    transport_factory: Callable[[str], Transport] | None = None

    def sync_settings(self) -> SyncSettings:
        """The sync protocol's settings (the live-retry wait follows the poll interval)."""
        return SyncSettings(
            push_batch=self.push_batch,
            page_limit=self.page_size,
            poll_interval_s=self.poll_interval_s,
            safety_pull_s=self.safety_pull_s,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
        )
