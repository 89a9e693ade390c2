"""Retry policy: what each failure means, and how long to wait before the next try.

Rules of this file: the one table of HTTP statuses (:data:`STATUS_TABLE`) lives here, and
every other place that reads a status derives its answer from it: the REST transport's
exception (:func:`error_for_status`), the engine's disposition (:func:`classify_status`,
:func:`classify`), the per-operation verdicts of a push (``core/sync.py``) and the live
channel's refused handshake (:func:`error_for_handshake`). ``docs/architecture.md`` prints the
table (``python -m syncengine.core.policy``; a test fails if it drifts).

Pure functions: the random source, the attempt number and the clock are passed in, so tests
can pin them. The engine plugs :class:`RetryPolicy` into stamina's ``retry_context`` as its
``on=`` hook, so the reconnect loop is stamina's, with our classification and our
full-jitter delays.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping

import attrs

from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    RateLimited,
    Rejected,
    ServerUnavailable,
    SyncEngineError,
    TLSVerificationFailed,
    TransportError,
    WireError,
)

__all__ = [
    "CLOSE_CODES",
    "PERMANENT_STATUSES",
    "STATUS_TABLE",
    "Disposition",
    "RetryAfterGate",
    "RetryPolicy",
    "StatusRule",
    "classify",
    "classify_status",
    "error_for_close",
    "error_for_handshake",
    "error_for_status",
    "full_jitter",
    "rate_limit_wait",
    "retry_after_seconds",
    "status_rule",
    "status_table_markdown",
]


class Disposition(enum.Enum):
    """What to do about a failure."""

    RETRY = "retry"  # transient: back off and try again
    FAIL_OP = "fail_op"  # permanent for this operation: park it as FAILED, go on
    LOGIN = "login"  # credentials refused: stop, state FAILED, nothing lost
    RESYNC = "resync"  # cursor expired: resync from a snapshot
    STOP = "stop"  # not retryable and not about one op (e.g. TLS verification)


@attrs.frozen
class StatusRule:
    """How syncengine reads one HTTP status: one row of :data:`STATUS_TABLE`.

    Attributes:
        disposition: what the engine does about a request or operation answered so.
        error: the exception the REST transport raises for a request answered so.
        on_handshake: the exception for a live-channel handshake refused with this status;
            None means the live path itself is refused (a proxy, a blocked route), so the
            engine polls over REST instead of retrying the session.
        meaning: the reason, in words (printed in ``docs/architecture.md``).
    """

    disposition: Disposition
    error: type[SyncEngineError]
    on_handshake: type[SyncEngineError] | None
    meaning: str


_SERVER_ERROR = StatusRule(
    Disposition.RETRY,
    ServerUnavailable,
    ServerUnavailable,
    "server error: transient, retry with backoff",
)
_PERMANENT = StatusRule(
    Disposition.FAIL_OP,
    Rejected,
    None,
    "refused for good: that one operation becomes FAILED, the rest keep flowing",
)

#: Every HTTP status syncengine gives a meaning to. A status not listed falls back to the
#: rule of its class: any other 4xx is permanent, any other 5xx is retried, and anything
#: else is retried as unexpected (see :func:`status_rule`).
STATUS_TABLE: Mapping[int, StatusRule] = {
    400: _PERMANENT,
    401: StatusRule(
        Disposition.LOGIN,
        AuthFailed,
        AuthFailed,
        "credentials or token refused: stop and log in again; nothing is lost",
    ),
    403: _PERMANENT,
    404: _PERMANENT,
    408: StatusRule(
        Disposition.RETRY,
        ServerUnavailable,
        None,
        "request timeout (often a proxy's): transient, retry with backoff",
    ),
    409: _PERMANENT,
    410: StatusRule(
        Disposition.RESYNC,
        CursorExpired,
        None,
        "cursor older than the server's retention: resync, one Discontinuity",
    ),
    413: _PERMANENT,
    422: _PERMANENT,
    429: StatusRule(
        Disposition.RETRY,
        RateLimited,
        None,
        "rate limited: send nothing until Retry-After has passed",
    ),
    500: _SERVER_ERROR,
    502: _SERVER_ERROR,
    503: _SERVER_ERROR,
    504: _SERVER_ERROR,
}

_OTHER_4XX = _PERMANENT
_OTHER_5XX = _SERVER_ERROR
# A status outside 4xx/5xx where an answer was expected (a redirect from a proxy, which is
# not followed, or a status the protocol does not use) says nothing about the operation: it
# is more likely a misconfiguration that gets fixed than a verdict, so it is retried.
_UNEXPECTED = StatusRule(
    Disposition.RETRY,
    Rejected,
    None,
    "any other status (a redirect, an unknown code): not a verdict on the operation, retried",
)

#: HTTP statuses that end an operation for good (G7), derived from :data:`STATUS_TABLE`.
PERMANENT_STATUSES = frozenset(
    status for status, rule in STATUS_TABLE.items() if rule.disposition is Disposition.FAIL_OP
)


def status_rule(status: int) -> StatusRule:
    """The row of :data:`STATUS_TABLE` for ``status``, or the fallback for its class."""
    rule = STATUS_TABLE.get(status)
    if rule is not None:
        return rule
    if 400 <= status < 500:
        return _OTHER_4XX
    if 500 <= status < 600:
        return _OTHER_5XX
    return _UNEXPECTED


def classify_status(status: int) -> Disposition:
    """Disposition of an HTTP status (of a request or one operation's result)."""
    return status_rule(status).disposition


def error_for_status(
    status: int, code: str, reason: str, *, retry_after: float | None = None
) -> SyncEngineError:
    """The typed error for a request the server answered with ``status``.

    Args:
        status: the HTTP status (not 2xx).
        code: the server's machine-readable code (``http_<status>`` when it sent none).
        reason: the server's reason in words.
        retry_after: the server's requested pause in seconds (used for 429 only).
    """
    error = status_rule(status).error
    if error is RateLimited:
        return RateLimited(f"{code}: {reason}", retry_after=retry_after)
    if error is ServerUnavailable:
        return ServerUnavailable(f"server error {status}: {reason}")
    if error is Rejected:
        return Rejected(code, reason, status=status)
    return error(f"{code}: {reason}")


def error_for_handshake(status: int) -> SyncEngineError | None:
    """The error for a live handshake refused with HTTP ``status``.

    Returns None when the live path itself is refused: the caller polls over REST instead.
    """
    error = status_rule(status).on_handshake
    if error is None:
        return None
    if error is AuthFailed:
        return AuthFailed("the server refused the token on the live channel")
    return error(f"live channel handshake: HTTP {status}")


#: WebSocket close (code, reason) pairs with a meaning of their own; any other close is a
#: lost link (:class:`ServerUnavailable`, retried).
CLOSE_CODES: Mapping[tuple[int, str], type[SyncEngineError]] = {
    (1008, "unauthorized"): AuthFailed,
}


def error_for_close(code: int | None, reason: str) -> SyncEngineError:
    """The error for a live channel the server closed with ``code`` and ``reason``."""
    error = CLOSE_CODES.get((code, reason)) if code is not None else None
    if error is AuthFailed:
        return AuthFailed("the server refused the token on the live channel")
    if error is not None:  # pragma: no cover - every entry today is AuthFailed
        return error(f"live channel closed (code {code} {reason})")
    detail = f"{code} {reason}".strip()
    return ServerUnavailable(f"live channel closed (code {detail})")


def retry_after_seconds(header: str | None, body_ms: object = None) -> float | None:
    """The pause a 429 asks for, in seconds, or None when it names none.

    The body's ``retry_after_ms`` wins over the header: ``Retry-After`` holds whole seconds
    (the server rounds up), so a shortfall of one token at 50 a second (20 ms) would read as
    a one-second wait.

    Args:
        header: the ``Retry-After`` header (delay-seconds form; an HTTP date is not read),
            used when the body names no number of milliseconds.
        body_ms: the body's ``retry_after_ms``.
    """
    if isinstance(body_ms, int | float) and not isinstance(body_ms, bool):
        return max(0.0, body_ms / 1000)
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    return None


#: The pause taken after a 429 that names none.
RATE_LIMIT_DEFAULT_WAIT_S = 1.0


def rate_limit_wait(retry_after: float | None, remaining: float) -> float | None:
    """How long a one-shot sync waits out a 429 before it asks again, or None to give up.

    A 429 says "later", not "no": a ``syncengine sync`` whose ``--timeout`` leaves room for
    the server's pause waits it out and resumes (each pulled page is committed with its
    cursor, so nothing is pulled twice); one whose time would run out first gives up now
    instead of sleeping into its deadline.

    Args:
        retry_after: the pause the server asked for, in seconds (None: it named none).
        remaining: seconds left before the caller's deadline.
    """
    wait = RATE_LIMIT_DEFAULT_WAIT_S if retry_after is None else max(0.0, retry_after)
    return wait if wait < remaining else None


class RetryAfterGate:
    """No request before the server's ``Retry-After`` has passed, for the whole client.

    A 429 refuses the client, not one request: every request waits it out. The clock is
    passed in (monotonic seconds), so the gate is pure.
    """

    def __init__(self) -> None:
        self._until = 0.0

    def hold(self, now: float, seconds: float) -> None:
        """Send nothing for ``seconds`` from ``now`` (the latest answer wins)."""
        self._until = now + seconds

    def wait(self, now: float) -> float:
        """Seconds still to wait at ``now`` (0.0 when requests may go)."""
        return max(0.0, self._until - now)


def status_table_markdown() -> str:
    """:data:`STATUS_TABLE` and its fallbacks as a Markdown table (for the docs)."""
    rows = [
        "| status | disposition | REST error | refused live handshake | meaning |",
        "|---|---|---|---|---|",
    ]
    entries = [(str(s), r) for s, r in sorted(STATUS_TABLE.items())]
    entries += [("other 4xx", _OTHER_4XX), ("other 5xx", _OTHER_5XX), ("other", _UNEXPECTED)]
    for label, rule in entries:
        handshake = rule.on_handshake.__name__ if rule.on_handshake else "LiveUnavailable (poll)"
        rows.append(
            f"| {label} | {rule.disposition.name} | {rule.error.__name__} | {handshake} "
            f"| {rule.meaning} |"
        )
    return "\n".join(rows)


def full_jitter(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): uniform in [0, min(cap, base * 2**n)].

    The jitter is applied *after* the cap: capping after jittering would make every client
    that reached the cap wait exactly ``cap`` and reconnect together, a reconnect storm that
    re-synchronises the clients after every server restart.
    """
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return rng() * ceiling


def classify(exc: BaseException) -> Disposition:
    """Disposition of an exception raised by the transport.

    Agrees with :func:`classify_status` for every error :func:`error_for_status` builds.
    """
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
        """Forget past failures: the next delay starts from ``base`` again."""
        self.failures = 0

    def delay(self, exc: BaseException) -> float:
        """The wait before the next try after ``exc`` (and count the failure)."""
        delay = full_jitter(self.failures, base=self.base, cap=self.cap, rng=self.rng)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        self.failures += 1
        return delay

    def __call__(self, exc: Exception) -> bool | float:
        """False when ``exc`` is not worth a retry, else the delay before the next try."""
        if classify(exc) is not Disposition.RETRY:
            return False
        delay = self.delay(exc)
        if self.on_backoff is not None:
            self.on_backoff(exc, delay)
        return delay


if __name__ == "__main__":  # pragma: no cover
    print(status_table_markdown())
