"""The store's side of the chat operations (issue 18): :class:`ChatQueries`, part of ``Store``.

Kept apart so that ``Store`` stays a thin facade under the class-size limit; every method
here is one transaction through the store's own ``_read``/``_write``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from syncengine.models import Message, OutboxItem
from syncengine.store import outbox, queries

__all__ = ["ChatQueries"]

T = TypeVar("T")


class ChatQueries:
    """Message lookup by id and cancel; mixed into :class:`~syncengine.store.Store`."""

    user: str

    def _read(self, query: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # the Store's

    def _write(self, change: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        raise NotImplementedError  # the Store's

    def message(self, message_id: str) -> Message | None:
        """A message by server id, or by the op id of this user's send; None if not stored."""
        found = self._read(queries.message_by_id, message_id)
        if found is not None:
            return found
        return self._read(queries.message_by_op, self.user, message_id)

    def cancel(self, op_id: str) -> OutboxItem:
        """Delete an unsent operation and its local echo (see ``core/cancel.py``); returns it.

        Raises:
            NotFound: no such operation. UsageError: it cannot be cancelled (the reason why).
        """
        return self._write(outbox.cancel, self.user, op_id)
