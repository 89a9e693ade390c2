"""History back-fill: when a page read from the store is short, what to ask the server for,
and how to describe the page that results. Pure: the store's answers are passed in."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from syncengine.core.requests import HistoryRequest
from syncengine.models import HistoryPage, Message

__all__ = ["RESYNC_HISTORY_PAGE", "backfill_request", "history_page"]

#: Messages per history request when a resync rebuilds a conversation.
RESYNC_HISTORY_PAGE = 200


def backfill_request(
    conversation_id: str,
    local: Sequence[Message],
    *,
    before: int | None,
    limit: int,
    complete: bool,
    connected: bool,
    lowest_stored: Callable[[], int | None],
) -> HistoryRequest | None:
    """The history request that completes a short local page, or None.

    Nothing is fetched when the page is full, when the server already said nothing older
    exists (an explicit end of history stops back-pagination from running to the start),
    or when the engine is not connected. The request starts below the oldest server message
    of the page (pending local echoes have no seq), else below ``before``, else below the
    oldest message stored.

    Args:
        conversation_id: the conversation read.
        local: the page read from the store, oldest first.
        before: the seq the caller asked to read below.
        limit: the page size the caller asked for.
        complete: the store holds the conversation back to its start.
        connected: a server can be asked now.
        lowest_stored: the lowest seq stored for the conversation (asked only when needed).
    """
    server_msgs = [m for m in local if m.seq is not None]
    if len(server_msgs) >= limit or complete or not connected:
        return None
    anchor = server_msgs[0].seq if server_msgs else before
    if anchor is None:
        anchor = lowest_stored()
    return HistoryRequest(
        conversation_id, anchor, limit - len(server_msgs) if server_msgs else limit
    )


def history_page(
    local: Sequence[Message], lowest: int | None, *, complete: bool, from_store: bool
) -> HistoryPage:
    """Describe a page: whether older messages exist and whether history ended.

    Args:
        local: the page, oldest first.
        lowest: the lowest seq stored for the conversation.
        complete: the store holds the conversation back to its start.
        from_store: the page was read without asking the server.
    """
    first = next((m.seq for m in local if m.seq is not None), None)
    older_local = first is not None and lowest is not None and lowest < first
    return HistoryPage(
        messages=tuple(local),
        has_more=older_local or not complete,
        from_store=from_store,
        end_of_history=complete and not older_local,
    )
