"""Retry policy: which failures are transient, and how long to wait before the next try.

Pure functions: the random source and the attempt number are passed in, so tests can pin them.
The engine plugs :class:`RetryPolicy` into stamina's ``retry_context`` as its ``on=`` hook, so
the reconnect loop is stamina's, with our classification and our full-jitter delays.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    RateLimited,
    Rejected,
    TLSVerificationFailed,
    TransportError,
    WireError,
)

__all__ = [
    "PERMANENT_STATUSES",
    "Disposition",
    "RetryPolicy",
    "classify",
    "classify_status",
    "full_jitter",
]

#: HTTP statuses that end an operation for good (G7). 401, 410 and 429 have their own paths.
PERMANENT_STATUSES = frozenset({400, 403, 404, 409, 413, 422})


class Disposition(enum.Enum):
    """What to do about a failure."""

    RETRY = "retry"  # transient: back off and try again
    FAIL_OP = "fail_op"  # permanent for this operation: park it as FAILED, go on
    LOGIN = "login"  # credentials refused: stop, state FAILED, nothing lost
    RESYNC = "resync"  # cursor expired: resync from a snapshot
    STOP = "stop"  # not retryable and not about one op (e.g. TLS verification)


def full_jitter(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): uniform in [0, min(cap, base * 2**n)].

    The jitter is applied *after* the cap (pitfall 9): capping after jittering would make
    every client that reached the cap wait exactly ``cap`` and reconnect together.
    """
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return rng() * ceiling


def classify_status(status: int) -> Disposition:
    """Disposition of an HTTP status (of a request or one operation's result)."""
    if status == 401:
        return Disposition.LOGIN
    if status == 410:
        return Disposition.RESYNC
    if status == 429 or status >= 500 or status == 408:
        return Disposition.RETRY
    if status in PERMANENT_STATUSES or 400 <= status < 500:
        return Disposition.FAIL_OP
    return Disposition.RETRY


def classify(exc: BaseException) -> Disposition:
    """Disposition of an exception raised by the transport."""
    if isinstance(exc, AuthFailed):
        return Disposition.LOGIN
    if isinstance(exc, CursorExpired):
        return Disposition.RESYNC
    if isinstance(exc, TLSVerificationFailed):
        return Disposition.STOP
    if isinstance(exc, Rejected):
        return classify_status(exc.status) if exc.status else Disposition.FAIL_OP
    if isinstance(exc, TransportError):
        return Disposition.RETRY
    if isinstance(exc, WireError):
        # A malformed response (a server bug, a garbling middlebox): the request may well
        # succeed later; stopping the sync loop for good would need a restart to recover.
        return Disposition.RETRY
    return Disposition.STOP


class RetryPolicy:
    """Capped full-jitter backoff that honours ``Retry-After``, as a stamina ``on=`` hook.

    Calling the policy with an exception returns False (do not retry: stamina re-raises) or
    the delay in seconds. ``failures`` counts consecutive failures; :meth:`reset` is called by
    the engine once a connection reached LIVE, so the next outage starts from a short delay.
    """

    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        rng: Callable[[], float] = random.random,
        on_backoff: Callable[[BaseException, float], None] | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0
        self.on_backoff = on_backoff

    def reset(self) -> None:
        self.failures = 0

    def delay(self, exc: BaseException) -> float:
        """The wait before the next try after ``exc`` (and count the failure)."""
        delay = full_jitter(self.failures, base=self.base, cap=self.cap, rng=self.rng)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self.failures += 1
        return delay

    def __call__(self, exc: Exception) -> bool | float:
        if classify(exc) is not Disposition.RETRY:
            return False
        delay = self.delay(exc)
        if self.on_backoff is not None:
            self.on_backoff(exc, delay)
        return delay
