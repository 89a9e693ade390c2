"""When to pull and when to try the live channel again. Pure: ``now`` is passed in (seconds
on a monotonic clock)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

from syncengine.core.backoff import Backoff
from syncengine.core.requests import CatchUp, ConnectLive, Request

__all__ = [
    "LIVE_GRACE_S",
    "OUTBOX_POLL_S",
    "Schedule",
    "SyncSettings",
    "default_live_retry_s",
    "live_handshake_s",
]

#: The live loop wakes at least this often to look at the outbox: another process (the CLI)
#: may have queued work without being able to wake this one.
OUTBOX_POLL_S = 0.25


#: How long a session that has pushed and caught up over REST still waits for a live
#: handshake under way before it reports LIVE in polling mode: a healthy link on a near
#: server is up by then (apps that act on LIVE find the channel open); a broken one only
#: delays the next pull by this much, never the first push or catch-up.
LIVE_GRACE_S = 0.5


def default_live_retry_s(poll_interval_s: float) -> float:
    """The longest wait between two tries of the live channel while polling.

    Six poll intervals, and never under 30 s: a refused WebSocket (a proxy, a blocked path)
    is usually refused again, and each try costs a handshake. The waits grow to this cap
    with backoff (see :meth:`Schedule.live_failed`).
    """
    return max(poll_interval_s * 6, 30.0)


def live_handshake_s(request_timeout_s: float) -> float:
    """The deadline of each step of a live handshake (the upgrade, then the ``ready`` frame).

    The same as one REST request: a middlebox that never answers the upgrade, or accepts it
    and then passes nothing, costs no more than a slow request, and the session polls over
    REST meanwhile. At least a second, so a loaded but healthy server is not given up on.
    """
    return max(1.0, request_timeout_s)


@attrs.frozen(kw_only=True)
class SyncSettings:
    """The sync protocol's knobs.

    Attributes:
        push_batch: operations per push request.
        page_limit: events per pull request.
        poll_interval_s: pull interval when the live channel is unavailable.
        safety_pull_s: pull interval while live, as a safety net.
        live_retry_s: the longest wait between two tries of the live channel while polling
            (default: :func:`default_live_retry_s` of the poll interval); the waits start at
            ``backoff_base_s`` and grow with backoff, capped by this and ``backoff_cap_s``.
        backoff_base_s, backoff_cap_s: waits before retrying a single request.
    """

    push_batch: int = 500
    page_limit: int = 500
    poll_interval_s: float = 5.0
    safety_pull_s: float = 30.0
    live_retry_s: float = attrs.field(
        default=attrs.Factory(lambda self: default_live_retry_s(self.poll_interval_s), True)
    )
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


class Schedule:
    """The pull timer (safety net or poll), the urgent-pull gate, and the live-retry timer.

    Args:
        settings: the timers.
        rng: the random source of the live-retry jitter.
    """

    def __init__(self, settings: SyncSettings, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.interval = settings.safety_pull_s
        self.next_pull = 0.0
        self.next_live_try = 0.0
        self.pull_blocked_until = 0.0
        self.presence_blocked_until = 0.0
        self.pull_wanted = False
        # A live channel that failed is retried with capped full-jitter backoff: soon after a
        # passing fault, rarely when a middlebox refuses it for good.
        self.live_backoff = Backoff(
            base=settings.backoff_base_s,
            cap=min(settings.backoff_cap_s, settings.live_retry_s),
            rng=rng,
        )

    def reached_live(self, now: float, *, live: bool) -> None:
        """The session caught up; ``live``: over the live channel (else polling)."""
        s = self.settings
        self.interval = s.safety_pull_s if live else s.poll_interval_s
        self.next_pull = now + self.interval
        self.pull_blocked_until = self.presence_blocked_until = 0.0

    def live_try_started(self) -> None:
        """A live handshake is under way: no other one until it ends."""
        self.next_live_try = math.inf

    def live_failed(self, now: float) -> float:
        """A live handshake failed: returns the wait before the next one (backoff)."""
        delay = self.live_backoff.next()
        self.next_live_try = now + delay
        return delay

    def live_attached(self) -> None:
        """The live channel is up: pulls become a safety net, and a later failure of the
        channel is retried from the shortest wait again."""
        self.interval = self.settings.safety_pull_s
        self.live_backoff.reset()
        self.next_live_try = 0.0

    def want_pull(self) -> None:
        """Pull soon (a malformed live frame may have carried an event)."""
        self.pull_wanted = True

    def pull_done(self, now: float) -> None:
        """A catch-up ended well: the next one is an interval away."""
        self.next_pull = now + self.interval

    def pull_failed(self, now: float, delay: float) -> None:
        """A catch-up failed while the live link stays up: retry after ``delay``, and no
        urgent pull before then either (a gap must not turn a failure into a busy loop)."""
        self.next_pull = self.pull_blocked_until = now + delay

    def presence_failed(self, now: float, delay: float) -> None:
        """A presence snapshot failed while the live link stays up: try again after
        ``delay`` (not at once: a refusing server must not turn it into a busy loop)."""
        self.presence_blocked_until = now + delay

    def presence_due(self, now: float) -> bool:
        """A stale presence snapshot may be fetched at ``now`` (no failed one blocks it)."""
        return now >= self.presence_blocked_until

    def tick(self, now: float, *, gaps: bool, polling_wants_live: bool) -> list[Request]:
        """What is due at ``now``.

        Args:
            now: the monotonic time.
            gaps: a seq gap is open (pull at once).
            polling_wants_live: the session polls but would rather be live.
        """
        due: list[Request] = []
        urgent = gaps or self.pull_wanted
        if (urgent and now >= self.pull_blocked_until) or now >= self.next_pull:
            self.pull_wanted = False
            due.append(CatchUp())
        if polling_wants_live and now >= self.next_live_try:
            self.live_try_started()
            due.append(ConnectLive())
        return due

    def next_wakeup(self, now: float) -> float:
        """When the driver must call :meth:`tick` next, at the latest."""
        return min(now + OUTBOX_POLL_S, max(now, self.next_pull))
