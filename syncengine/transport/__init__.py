"""Transports: the only code that touches httpx (rest.py) and websockets (live.py)."""

from __future__ import annotations

from syncengine.transport.base import LiveLink, LiveUnavailable, Transport, make_ssl_context
from syncengine.transport.rest import RestTransport

__all__ = ["LiveLink", "LiveUnavailable", "RestTransport", "Transport", "make_ssl_context"]
