"""syncengine: an offline-first messaging sync engine."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
