"""Typing indicators, sender side: throttle, refresh and idle stop. Pure; time is passed in.

The receiver expires an indicator after about 8 s, so a typist re-sends ``typing: true``
about every 3 s while still typing, and sends ``typing: false`` once idle (5 s without a
keystroke) or when told to stop.
"""

from __future__ import annotations

__all__ = ["TypingThrottle"]


class TypingThrottle:
    """Decides which typing frames to send.

    Args:
        refresh_s: minimum interval between two ``true`` frames for one conversation.
        idle_s: after this long without :meth:`update`, typing is stopped.
    """

    def __init__(self, *, refresh_s: float = 3.0, idle_s: float = 5.0) -> None:
        self.refresh_s = refresh_s
        self.idle_s = idle_s
        self._last_sent: dict[str, float] = {}  # conversation -> when `true` was last sent
        self._last_key: dict[str, float] = {}  # conversation -> last keystroke

    def update(self, conversation_id: str, typing: bool, now: float) -> bool | None:
        """The user is (or stopped) typing. Returns the frame to send now, or None."""
        if not typing:
            was = self._last_sent.pop(conversation_id, None)
            self._last_key.pop(conversation_id, None)
            return False if was is not None else None
        self._last_key[conversation_id] = now
        last = self._last_sent.get(conversation_id)
        if last is None or now - last >= self.refresh_s:
            self._last_sent[conversation_id] = now
            return True
        return None

    def tick(self, now: float) -> list[tuple[str, bool]]:
        """Frames due at ``now``: refreshes while typing, stops once idle."""
        out: list[tuple[str, bool]] = []
        for cid in list(self._last_sent):
            if now - self._last_key.get(cid, 0.0) >= self.idle_s:
                del self._last_sent[cid]
                self._last_key.pop(cid, None)
                out.append((cid, False))
            elif now - self._last_sent[cid] >= self.refresh_s:
                self._last_sent[cid] = now
                out.append((cid, True))
        return out

    def active(self) -> list[str]:
        """Conversations in which the user is currently shown typing."""
        return list(self._last_sent)

    def reset(self) -> None:
        """Forget everything (the link dropped: the server stopped our typing already)."""
        self._last_sent.clear()
        self._last_key.clear()
