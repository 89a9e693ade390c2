"""The one codec of protocol v1: the cattrs converter, and encode/decode with input limits.

Decoding is *lenient* where a newer server may add things (unknown fields are ignored,
unknown event types become :class:`~syncengine.events.UnknownEvent`) and *strict* where a
wrong value would corrupt the store (types are checked exactly: ``"1"`` is not an int, ``1``
is not a string, ``true`` is not an int). It rejects, with a :class:`~syncengine.errors.WireError`
naming the field:

- frames larger than the size limit (``MAX_FRAME_BYTES`` for live frames, ``MAX_PAGE_BYTES``
  for REST bodies);
- nesting deeper than the parser's limit (1024 levels, enforced by orjson before any Python
  object is built, so a 10⁵-deep frame costs nothing);
- ``NaN``, ``Infinity`` and numbers that overflow a double;
- lone surrogates and invalid UTF-8;
- binary frames where text is expected.

This module does no I/O and is shared by the engine and the reference server (its old import
path, ``syncengine.wire``, re-exports it). The body types are in
:mod:`syncengine.protocol.bodies`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import make_converter

from syncengine.errors import WireError
from syncengine.protocol.bodies import (
    EventPage,
    HistoryMessage,
    HistoryPageWire,
    OpResult,
)
from syncengine.protocol.events import (
    SERVER_EVENT_TYPES,
    DurableEvent,
    MessageReceived,
    ReadReceipt,
    ServerEvent,
    UnknownEvent,
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

MAX_FRAME_BYTES = 1 << 20  # one live frame
MAX_PAGE_BYTES = 32 << 20  # one REST response body
# Integers must fit SQLite's INTEGER (and every other sane peer): signed 64 bits.
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1

T = TypeVar("T")


def _strict(kind: type, name: str) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        # bool is a subclass of int: refuse it where an int is expected.
        if type(value) is not kind:
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return hook


def _int(value: Any, _type: Any) -> int:
    if type(value) is not int:  # not bool, not float, not "1"
        raise TypeError(f"expected integer, got {type(value).__name__}")
    if not INT_MIN <= value <= INT_MAX:
        raise ValueError("integer out of the signed 64-bit range")
    return value


def _is_array(t: Any) -> bool:
    """``list[X]`` or ``tuple[X, ...]``: the types a JSON array structures into."""
    origin, args = get_origin(t), get_args(t)
    return origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)


def _array_factory(t: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    # cattrs turns any iterable into a sequence: "members": "bob" would become ("b", "o",
    # "b") and an object its keys. Only a JSON array is an array.
    factory = (
        list_structure_factory if get_origin(t) is list else homogenous_tuple_structure_factory
    )
    inner = factory(t, conv)

    def hook(value: Any, _type: Any) -> Any:
        if type(value) is not list:
            raise TypeError(f"expected array, got {type(value).__name__}")
        return inner(value, _type)

    return hook


def _object_factory(cl: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    # Without this, a string where an object belongs fails on its first field ("op_id:
    # expected str") instead of naming the value that is wrong.
    inner = make_dict_structure_fn(cl, conv)

    def hook(value: Any, _type: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected object, got {type(value).__name__}")
        return inner(value, _type)

    return hook


def _make_converter(detailed: bool = True) -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False, detailed_validation=detailed)
    conv.register_structure_hook(str, _strict(str, "string"))
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(bool, _strict(bool, "boolean"))
    conv.register_structure_hook_factory(_is_array, _array_factory)
    conv.register_structure_hook_factory(attrs.has, _object_factory)

    def _float(value: Any, _type: Any) -> float:
        if type(value) not in (int, float):
            raise TypeError(f"expected number, got {type(value).__name__}")
        return float(value)

    conv.register_structure_hook(float, _float)
    return conv


#: The one converter used by the engine and the reference server.
converter: cattrs.Converter = _make_converter()


def _omit_when_none(conv: cattrs.Converter) -> None:
    # Fields added for other protocols (Matrix's event ids, history tokens) default to None
    # and are left out of the encoding then, so every v1 frame keeps its bytes.
    optional = {"event_id", "read_event_id", "prev", "reply_to"}
    for cls in (*SERVER_EVENT_TYPES.values(), HistoryPageWire):
        names = {f.name for f in attrs.fields(cls)} & optional
        if names:
            overrides: dict[str, Any] = {n: override(omit_if_default=True) for n in names}
            conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **overrides))


_omit_when_none(converter)
# The hot path structures with a converter that skips cattrs' detailed validation (about 2x
# faster); only when it fails is the detailed one run, to name the offending field.
_fast: cattrs.Converter = _make_converter(detailed=False)


def _field_path(exc: BaseException) -> tuple[str, str]:
    """First offending field path and message from a cattrs validation error."""
    try:
        messages = cattrs.transform_error(exc)
    except Exception:  # pragma: no cover - defensive: never let error reporting crash
        messages = [str(exc)]
    first = messages[0] if messages else str(exc)
    message, _, where = first.partition(" @ ")
    path = where.removeprefix("$").lstrip(".") or "frame"
    return path, message


def structure(obj: Any, cls: type[T], *, where: str = "") -> T:
    """Structure ``obj`` into ``cls`` with the strict converter, raising WireError."""
    try:
        return _fast.structure(obj, cls)
    except Exception:
        pass
    try:
        return converter.structure(obj, cls)
    except Exception as exc:  # whatever the input, callers only ever see WireError
        path, message = _field_path(exc)
        if path == "frame" or not where:
            field = where or path
        else:
            field = f"{where}{path}" if path.startswith("[") else f"{where}.{path}"
        raise WireError(message, field=field) from None
    raise WireError("does not match the schema", field=where or "frame")  # pragma: no cover


def decode_json(data: str | bytes | bytearray | memoryview, *, limit: int = MAX_FRAME_BYTES) -> Any:
    """Parse JSON text with the size limit; reject NaN, deep nesting and bad Unicode."""
    size = len(data)
    if isinstance(data, str) and size * 4 > limit:
        # the limit is in bytes: up to 4 per character once encoded
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise WireError(f"too large: {size} bytes > limit {limit}", field="frame")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"invalid JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None


def decode_event(obj: Any, *, where: str = "event") -> ServerEvent:
    """Turn one decoded JSON object into a typed server event.

    Unknown ``type`` values become :class:`UnknownEvent` (with the raw fields kept); a missing
    or non-string ``type`` and a wrong field type raise :class:`WireError`.
    """
    if not isinstance(obj, dict):
        raise WireError(f"expected object, got {type(obj).__name__}", field=where)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise WireError("missing or non-string event type", field=f"{where}.type")
    if kind == "message_received":
        fast = _fast_message(obj)
        if fast is not None:
            return fast
    cls = SERVER_EVENT_TYPES.get(kind)
    if cls is None:
        pos = obj.get("pos")
        return UnknownEvent(raw_type=kind, pos=pos if type(pos) is int else None, data=dict(obj))
    event = structure(obj, cls, where=where)
    _require_v1_positions(event, where)
    return event


def _require_v1_positions(event: ServerEvent, where: str) -> None:
    """Protocol v1 numbers every durable event: a null ``pos``/``seq``/``read_seq`` is refused
    (only a Matrix transport builds events without them, and never from v1 bytes)."""
    if isinstance(event, DurableEvent):
        for name in ("pos", "seq"):
            if getattr(event, name) is None:
                raise WireError("expected integer, got NoneType", field=f"{where}.{name}")
    if isinstance(event, ReadReceipt) and event.read_seq is None:
        raise WireError("expected integer, got NoneType", field=f"{where}.read_seq")


def _fast_message(obj: dict[str, Any]) -> MessageReceived | None:
    """The hot path: a well-formed ``message_received`` checked by hand (about twice as fast
    as the converter). Anything unusual returns None and takes the converter's path, which
    applies the same rules and names the offending field."""
    pos, seq, ts = obj.get("pos"), obj.get("seq"), obj.get("ts_ms")
    cid, mid, sender = obj.get("conversation_id"), obj.get("message_id"), obj.get("sender")
    body, op = obj.get("body"), obj.get("op_id")
    if (
        type(pos) is int
        and type(seq) is int
        and type(ts) is int
        and INT_MIN <= pos <= INT_MAX
        and INT_MIN <= seq <= INT_MAX
        and INT_MIN <= ts <= INT_MAX
        and type(cid) is str
        and type(mid) is str
        and type(sender) is str
        and type(body) is str
        and (op is None or type(op) is str)
        and "event_id" not in obj  # never in v1; the converter's path reads it
        and "reply_to" not in obj  # a reply: the converter's path checks it
    ):
        return MessageReceived(
            pos=pos,
            conversation_id=cid,
            seq=seq,
            ts_ms=ts,
            message_id=mid,
            op_id=op,
            sender=sender,
            body=body,
        )
    return None


def decode_frame(data: str | bytes, *, limit: int = MAX_FRAME_BYTES) -> Any:
    """Decode one live (WebSocket) frame into a JSON object. Binary frames are refused."""
    if not isinstance(data, str):
        raise WireError("binary frame where text was expected", field="frame")
    obj = decode_json(data, limit=limit)
    if not isinstance(obj, dict):
        raise WireError(f"expected object, got {type(obj).__name__}", field="frame")
    return obj


def decode_page(data: bytes | str, *, lenient: bool = True) -> EventPage:
    """Decode a ``GET /v1/events`` response body.

    With ``lenient`` (the default), an event that does not decode is returned in ``bad``
    instead of failing the whole page; the page envelope itself is always strict.
    """
    obj = decode_json(data, limit=MAX_PAGE_BYTES)
    if not isinstance(obj, dict):
        raise WireError("expected object", field="page")
    raw_events = obj.get("events")
    if not isinstance(raw_events, list):
        raise WireError("expected list", field="page.events")
    events: list[ServerEvent] = []
    bad: list[tuple[str, str]] = []
    for i, raw in enumerate(raw_events):
        try:
            events.append(decode_event(raw, where=f"events[{i}]"))
        except WireError as exc:
            # One poison event must not block the stream: it is kept aside and skipped.
            if not lenient:
                raise
            bad.append((orjson.dumps(raw).decode(), str(exc)))
    nxt = obj.get("next")
    more = obj.get("has_more")
    if type(nxt) is not int or not 0 <= nxt <= INT_MAX:
        raise WireError("expected non-negative integer", field="page.next")
    if type(more) is not bool:
        raise WireError("expected boolean", field="page.has_more")
    return EventPage(events=tuple(events), next=nxt, has_more=more, bad=tuple(bad))


def decode_op_results(data: bytes | str) -> list[OpResult]:
    """Decode a ``POST /v1/ops`` response body."""
    obj = decode_json(data, limit=MAX_PAGE_BYTES)
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), list):
        raise WireError("expected object with a results list", field="results")
    return structure(obj["results"], list[OpResult], where="results")


def decode_history(data: bytes | str) -> HistoryPageWire:
    """Decode a ``GET /v1/conversations/{id}/messages`` response body."""
    obj = decode_json(data, limit=MAX_PAGE_BYTES)
    if not isinstance(obj, dict):
        raise WireError(f"expected object, got {type(obj).__name__}", field="history")
    page = structure(obj, HistoryPageWire, where="history")
    for i, message in enumerate(page.messages):
        if message.seq is None:  # v1 numbers every message (see _require_v1_positions)
            raise WireError("expected integer, got NoneType", field=f"history.messages[{i}].seq")
    return page


def encode_event(event: ServerEvent) -> dict[str, Any]:
    """A server event as a JSON-ready dict with its ``type`` tag."""
    if isinstance(event, UnknownEvent):
        return dict(event.data)
    out: dict[str, Any] = {"type": event.type}
    out.update(converter.unstructure(event))
    return out


def dumps(obj: Any) -> bytes:
    """Serialize to compact JSON bytes (attrs instances and events included)."""
    if isinstance(obj, ServerEvent):
        obj = encode_event(obj)
    elif attrs.has(type(obj)):
        obj = converter.unstructure(obj)
    elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        obj = [encode_event(o) if isinstance(o, ServerEvent) else o for o in obj]
    elif isinstance(obj, Mapping):
        obj = dict(obj)
    return orjson.dumps(obj)


def encode_body(body: Any) -> dict[str, Any]:
    """A request or response body (an attrs instance of :mod:`~syncengine.protocol.bodies`)
    as a JSON-ready dict, its keys in field order."""
    out: dict[str, Any] = converter.unstructure(body)
    return out


def encode_frame(frame: Any) -> dict[str, Any]:
    """A live control frame (``ReadyFrame``, ``AuthFrame``, …) with its ``type`` tag first."""
    out: dict[str, Any] = {"type": frame.type}
    out.update(converter.unstructure(frame))
    return out


def encode_op_result(result: OpResult) -> dict[str, Any]:
    """One operation's result with exactly the keys of its kind.

    A rejection carries ``code``, ``reason`` and ``status_code``; an accepted operation
    carries ``conversation_id``, ``message_id``, ``seq``, ``pos`` and ``ts_ms`` (null where
    nothing was logged).
    """
    if result.status == "rejected":
        return {
            "op_id": result.op_id,
            "status": result.status,
            "code": result.code,
            "reason": result.reason,
            "status_code": result.status_code,
        }
    return {
        "op_id": result.op_id,
        "status": result.status,
        "conversation_id": result.conversation_id,
        "message_id": result.message_id,
        "seq": result.seq,
        "pos": result.pos,
        "ts_ms": result.ts_ms,
    }
