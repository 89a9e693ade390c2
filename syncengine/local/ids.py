"""Ids as people type them: a unique prefix names a conversation or an operation (as git does).

Full ids are 36 characters; anything shorter that starts exactly one id in the store stands
for it. An exact id always wins; a prefix that starts several ids is refused with the
candidates; one that starts none is passed on unchanged (the caller reports it as unknown).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from syncengine.errors import UsageError
from syncengine.local.account import open_store

__all__ = ["MIN_PREFIX", "resolve_conversation", "resolve_operations"]

#: The shortest prefix taken for an id (shorter ones are too easy to mistype into another).
MIN_PREFIX = 4


def _resolve(given: str, ids: Iterable[str], what: str) -> str:
    known = list(ids)
    if given in known or len(given) < MIN_PREFIX:
        return given
    matches = [i for i in known if i.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5])
        raise UsageError(f"{what} prefix {given} is ambiguous: it starts {shown}")
    return given


def resolve_conversation(db: str | os.PathLike[str], given: str) -> str:
    """The conversation id that ``given`` is, or is the unique prefix of."""
    with open_store(db) as store:
        if store.has_conversation(given):
            return given
        ids = [c.id for c in store.conversations()]
    return _resolve(given, ids, "conversation")


def resolve_operations(db: str | os.PathLike[str], given: list[str]) -> list[str]:
    """The operation ids that ``given`` are, or are unique prefixes of."""
    with open_store(db) as store:
        ids = [item.op_id for item in store.outbox(None, limit=100_000)]
    return [_resolve(g, ids, "operation") for g in given]
