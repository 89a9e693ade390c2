"""Validation of an operation before anything is written (moved unchanged from ``store.py``).

It stays here until the shared ``syncengine/protocol/`` package, with the one definition of
operations and their limits for the client and the server, is wired in.
"""

from __future__ import annotations

from typing import Any

import orjson

from syncengine.errors import UsageError
from syncengine.models import OpKind

__all__ = ["MAX_BODY_CHARS", "MAX_TITLE_CHARS"]

MAX_BODY_CHARS = 16_000
MAX_TITLE_CHARS = 200

_MAX_SQL_INT = (1 << 63) - 1


def _check_text(value: str, what: str) -> None:
    # SQLite and the wire need valid UTF-8: a lone surrogate would fail deep inside the
    # write (UnicodeEncodeError from sqlite3, JSONEncodeError from orjson) instead of here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid text (lone surrogate)") from None


def _validate(kind: OpKind, conversation_id: str, payload: dict[str, Any]) -> None:
    if not isinstance(conversation_id, str) or not conversation_id:
        raise UsageError("conversation_id must be a non-empty string")
    _check_text(conversation_id, "conversation_id")
    if kind in (OpKind.SEND, OpKind.EDIT):
        body = payload.get("body")
        if not isinstance(body, str) or not body.strip():
            raise UsageError("body must be a non-empty string")
        if len(body) > MAX_BODY_CHARS:
            raise UsageError(f"body is {len(body)} characters; the limit is {MAX_BODY_CHARS}")
        try:
            body.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("body is not valid text (lone surrogate)") from None
    if kind in (OpKind.EDIT, OpKind.DELETE) and not (
        payload.get("message_id") or payload.get("target_op_id")
    ):
        raise UsageError("edit and delete need message_id or target_op_id")
    if kind is OpKind.MARK_READ:
        seq = payload.get("seq")
        if type(seq) is not int or not 0 <= seq <= _MAX_SQL_INT:
            raise UsageError("seq must be a non-negative 64-bit integer")
    if kind is OpKind.CREATE_CONVERSATION:
        title = payload.get("title")
        if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_CHARS:
            raise UsageError(f"title must be 1 to {MAX_TITLE_CHARS} characters")
        members = payload.get("members", [])
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise UsageError("members must be a list of user names")
    try:
        # The payload travels as JSON: refuse what cannot (sets, objects, lone surrogates in
        # any string, integers beyond 64 bits) before anything is written.
        orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise UsageError(f"payload cannot be sent: {exc}") from None
