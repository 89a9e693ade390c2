"""A logging filter that collapses repeated records, so that an error repeated thousands of
times a second (a failed ``accept()`` under a connection flood, a client that sends garbage
in a loop) cannot fill the disk or drown the log.

Records are grouped by where they were logged (logger, level, file and line), not by their
text, so a message with varying arguments is still one group. In each interval a group passes
its first ``burst`` records; the rest are dropped and counted, and the first record of the
group after the interval says how many were dropped. ``syncengine serve`` installs it on its
log handlers (:func:`install_repeat_filter`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs

__all__ = ["RepeatFilter", "install_repeat_filter"]

_MAX_GROUPS = 4096


@attrs.define
class _Window:
    start: float
    passed: int = 0
    dropped: int = 0


class RepeatFilter(logging.Filter):
    """Pass at most ``burst`` records per call site per ``interval_s``; count the others.

    Args:
        interval_s: length of a window, in seconds.
        burst: records of one call site passed per window.
        clock: monotonic seconds (injectable for tests).

    Attributes:
        dropped: records dropped since the filter was made, in all.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.burst = burst
        self._clock = clock
        self._windows: dict[tuple[str, int, str, int], _Window] = {}
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Decide on ``record`` (once: a record seen by several handlers is judged once)."""
        verdict = record.__dict__.get("_repeat_verdict")
        if isinstance(verdict, bool):
            return verdict
        verdict = self._judge(record)
        record._repeat_verdict = verdict
        return verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.pathname, record.lineno)
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.interval_s:
            if len(self._windows) >= _MAX_GROUPS:
                self._forget_old(now)
            dropped = window.dropped if window is not None else 0
            self._windows[key] = _Window(start=now, passed=1)
            if dropped:
                record.msg = (
                    f"{record.getMessage()} [and {dropped} more like it in the previous "
                    f"{self.interval_s:g} s, not logged]"
                )
                record.args = None
            return True
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.dropped += 1
        self.dropped += 1
        return False

    def _forget_old(self, now: float) -> None:
        old = [k for k, w in self._windows.items() if now - w.start >= self.interval_s]
        for key in old:
            del self._windows[key]
        if len(self._windows) >= _MAX_GROUPS:  # all recent: start afresh rather than grow
            self._windows.clear()


def install_repeat_filter(
    logger: logging.Logger | None = None, interval_s: float = 10.0, burst: int = 5
) -> RepeatFilter:
    """Attach one :class:`RepeatFilter` to every handler of ``logger`` (default: root).

    Returns:
        The filter (its ``dropped`` counts what it dropped).
    """
    target = logger or logging.getLogger()
    repeat = RepeatFilter(interval_s=interval_s, burst=burst)
    for handler in target.handlers:
        handler.addFilter(repeat)
    return repeat
