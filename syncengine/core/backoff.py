"""Waits before retrying one request while the session stays up, and the Retry-After gate.

Pure: the random source is passed in. The delays are :func:`~syncengine.core.policy.full_jitter`
(jitter applied after the cap, so clients that reached the cap do not retry in step).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from syncengine.core.policy import full_jitter
from syncengine.errors import RateLimited

__all__ = ["Backoff", "retry_after"]


def retry_after(exc: BaseException) -> float | None:
    """The server's Retry-After carried by ``exc`` (a 429), or None."""
    return exc.retry_after if isinstance(exc, RateLimited) else None


class Backoff:
    """Capped full-jitter delays for consecutive failures of one kind.

    Args:
        base: the first ceiling, doubled per failure.
        cap: the largest ceiling.
        rng: uniform random source in [0, 1).
    """

    def __init__(
        self, *, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0

    def next(self, server_wait: float | None = None) -> float:
        """The wait before the next try (and count the failure).

        Args:
            server_wait: the server's Retry-After, when it sent one: never retry sooner.
        """
        delay = full_jitter(self.failures, base=self.base, cap=self.cap, rng=self.rng)
        self.failures += 1
        return delay if server_wait is None else max(delay, server_wait)

    def reset(self) -> None:
        """A success: the next failure starts from the shortest wait again."""
        self.failures = 0
