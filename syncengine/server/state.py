"""The server's pure rules under their old import path (this module is kept for callers).

Operation shapes and limits are in :mod:`syncengine.protocol.ops`, rejections in
:mod:`syncengine.protocol.errors` (``ApiError`` is their base,
:class:`~syncengine.protocol.errors.Rejection`), and the server's own rules in
:mod:`syncengine.server.rules`.
"""

from __future__ import annotations

from syncengine.protocol.errors import Rejection as ApiError
from syncengine.protocol.ops import (
    HISTORY_LIMIT_DEFAULT,
    HISTORY_LIMIT_MAX,
    MAX_BATCH,
    MAX_BODY_CHARS,
    MAX_MEMBERS,
    MAX_OP_ID_CHARS,
    MAX_TITLE_CHARS,
    PULL_LIMIT_DEFAULT,
    PULL_LIMIT_MAX,
    CreateConversationOp,
    DeleteOp,
    EditOp,
    MarkReadOp,
    Op,
    SendOp,
    check_conversation_id,
    check_device,
    check_members,
    check_title,
    check_user,
    is_conversation_id,
    op_id_of,
    parse_batch,
    parse_op,
    payload_hash,
)
from syncengine.server.rules import (
    PULL_SCAN_MAX,
    RateLimiter,
    TokenBucket,
    hash_password,
    retry_after_ms,
    scrypt_params,
)

__all__ = [
    "HISTORY_LIMIT_DEFAULT",
    "HISTORY_LIMIT_MAX",
    "MAX_BATCH",
    "MAX_BODY_CHARS",
    "MAX_MEMBERS",
    "MAX_OP_ID_CHARS",
    "MAX_TITLE_CHARS",
    "PULL_LIMIT_DEFAULT",
    "PULL_LIMIT_MAX",
    "PULL_SCAN_MAX",
    "ApiError",
    "CreateConversationOp",
    "DeleteOp",
    "EditOp",
    "MarkReadOp",
    "Op",
    "RateLimiter",
    "SendOp",
    "TokenBucket",
    "check_conversation_id",
    "check_device",
    "check_members",
    "check_title",
    "check_user",
    "hash_password",
    "is_conversation_id",
    "op_id_of",
    "parse_batch",
    "parse_op",
    "payload_hash",
    "retry_after_ms",
    "scrypt_params",
]
