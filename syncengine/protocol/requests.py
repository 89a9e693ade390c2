"""Requests of protocol v1 as data: method, path (segments escaped), query and body.

A transport sends a :class:`Request` as it is; nothing here performs I/O. Every value that
becomes a path segment is percent-escaped (``/`` included), so an id can never reach another
endpoint. The bearer token is not part of a request: it travels in the ``Authorization``
header, added by the transport for every request whose ``auth`` is true.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs

__all__ = [
    "Request",
    "add_member",
    "conversations",
    "create_conversation",
    "health",
    "history",
    "login",
    "path",
    "presence",
    "pull",
    "push",
    "remove_member",
    "rename",
]


@attrs.frozen(kw_only=True)
class Request:
    """One HTTP request to send.

    Attributes:
        method: ``GET``, ``POST``, ``PATCH`` or ``DELETE``.
        path: the path, its variable segments escaped.
        query: the query parameters, in order.
        body: the JSON body (None for none).
        auth: whether the request needs the bearer token.
    """

    method: str
    path: str
    query: tuple[tuple[str, int | str], ...] = ()
    body: Any = None
    auth: bool = True


def path(*segments: str) -> str:
    """``/v1/`` followed by the segments, each percent-escaped (``/`` and ``?`` included)."""
    return "/v1/" + "/".join(quote(segment, safe="") for segment in segments)


def health() -> Request:
    """``GET /v1/health`` (no auth)."""
    return Request(method="GET", path=path("health"), auth=False)


def login(user: str, password: str, device: str) -> Request:
    """``POST /v1/login`` (no auth)."""
    body = {"user": user, "password": password, "device": device}
    return Request(method="POST", path=path("login"), body=body, auth=False)


def push(ops: Iterable[Mapping[str, Any]]) -> Request:
    """``POST /v1/ops`` with a batch of raw operations."""
    return Request(method="POST", path=path("ops"), body={"ops": [dict(op) for op in ops]})


def pull(since: int, limit: int) -> Request:
    """``GET /v1/events?since=&limit=``."""
    return Request(method="GET", path=path("events"), query=(("since", since), ("limit", limit)))


def history(conversation_id: str, before: int | None, limit: int) -> Request:
    """``GET /v1/conversations/{id}/messages?limit=[&before=]``."""
    query: tuple[tuple[str, int | str], ...] = (("limit", limit),)
    if before is not None:
        query += (("before", before),)
    return Request(
        method="GET", path=path("conversations", conversation_id, "messages"), query=query
    )


def conversations() -> Request:
    """``GET /v1/conversations``."""
    return Request(method="GET", path=path("conversations"))


def presence() -> Request:
    """``GET /v1/presence``."""
    return Request(method="GET", path=path("presence"))


def create_conversation(conversation_id: str, title: str, members: Sequence[str]) -> Request:
    """``POST /v1/conversations`` (the id is chosen by the client)."""
    body = {"id": conversation_id, "title": title, "members": list(members)}
    return Request(method="POST", path=path("conversations"), body=body)


def rename(conversation_id: str, title: str) -> Request:
    """``PATCH /v1/conversations/{id}``."""
    return Request(
        method="PATCH", path=path("conversations", conversation_id), body={"title": title}
    )


def add_member(conversation_id: str, user: str) -> Request:
    """``POST /v1/conversations/{id}/members``."""
    return Request(
        method="POST", path=path("conversations", conversation_id, "members"), body={"user": user}
    )


def remove_member(conversation_id: str, user: str) -> Request:
    """``DELETE /v1/conversations/{id}/members/{user}``."""
    return Request(method="DELETE", path=path("conversations", conversation_id, "members", user))
