"""The cursor, made opaque, and what a transport promises about positions.

Protocol v1 has integer stream positions that only grow, a dense per-conversation ``seq``
(a hole is a missed event) and a server that assigns ``seq``. Another protocol (Matrix: opaque
``next_batch`` tokens that cannot be compared) plugs in by reporting other capabilities; the
sync protocol then stops comparing cursors and stops reading seq jumps as gaps.
"""

from __future__ import annotations

import attrs

__all__ = ["V1", "Cursor", "TransportCapabilities", "later"]

#: A position in the server's event stream: an int in protocol v1, a token elsewhere.
Cursor = int | str


@attrs.frozen(kw_only=True)
class TransportCapabilities:
    """What a transport's positions mean (a transport reports this as ``capabilities``).

    Attributes:
        ordered_cursor: cursors compare, and a later position is greater. When False the
            cursor is an opaque token: the newest one the server handed out is the cursor,
            and live events never move it (only pages do).
        dense_seq: each conversation's ``seq`` has no holes, so a jump means an event was
            missed and a pull is needed at once.
        server_seq: the server assigns ``seq`` (messages are ordered by it, not by clocks).
    """

    ordered_cursor: bool = True
    dense_seq: bool = True
    server_seq: bool = True


#: Protocol v1's capabilities: ordered integer cursor, dense server-assigned seq.
V1 = TransportCapabilities()


def later(mine: Cursor, theirs: Cursor, caps: TransportCapabilities) -> Cursor:
    """The cursor to keep when the server reports ``theirs`` and ours is ``mine``.

    With an ordered cursor a server never moves it back (G3: the cursor never falls behind
    what is stored); with opaque tokens the server's newest token is the only one that means
    anything.
    """
    if caps.ordered_cursor and isinstance(mine, int) and isinstance(theirs, int):
        return theirs if theirs > mine else mine
    return theirs
