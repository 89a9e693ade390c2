"""The wire codec; it lives in :mod:`syncengine.protocol.codec` (this path keeps working)."""

from __future__ import annotations

from syncengine.protocol.codec import *  # noqa: F403
from syncengine.protocol.codec import (
    INT_MAX,
    INT_MIN,
    MAX_FRAME_BYTES,
    MAX_PAGE_BYTES,
    EventPage,
    HistoryMessage,
    HistoryPageWire,
    OpResult,
    converter,
    decode_event,
    decode_frame,
    decode_history,
    decode_json,
    decode_op_results,
    decode_page,
    dumps,
    encode_body,
    encode_event,
    encode_frame,
    encode_op_result,
    structure,
)

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_FRAME_BYTES",
    "MAX_PAGE_BYTES",
    "EventPage",
    "HistoryMessage",
    "HistoryPageWire",
    "OpResult",
    "converter",
    "decode_event",
    "decode_frame",
    "decode_history",
    "decode_json",
    "decode_op_results",
    "decode_page",
    "dumps",
    "encode_body",
    "encode_event",
    "encode_frame",
    "encode_op_result",
    "structure",
]
