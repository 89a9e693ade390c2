"""The wire format: every server event type round-trips; recorded samples (tests/data/wire/)
decode, or fail with a WireError naming the offending field; arbitrary input never raises
anything but WireError."""

from __future__ import annotations

import gzip
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.errors import WireError
from syncengine.events import (
    SERVER_EVENT_TYPES,
    ConversationUpdated,
    DurableEvent,
    MessageReceived,
    ServerEvent,
    UnknownEvent,
)
from syncengine.wire import (
    INT_MAX,
    INT_MIN,
    MAX_FRAME_BYTES,
    EventPage,
    HistoryPageWire,
    OpResult,
    decode_event,
    decode_frame,
    decode_history,
    decode_json,
    decode_op_results,
    decode_page,
    dumps,
    encode_event,
)
from tests.helpers_store import REPO, open_store

WIRE = REPO / "tests" / "data" / "wire"
MALFORMED: dict[str, dict[str, str]] = json.loads((WIRE / "malformed.json").read_text())
FUZZ = settings(max_examples=150, deadline=None)


def load(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def frame(data: bytes) -> ServerEvent:
    """A text frame as the WebSocket library hands it over (str), decoded to an event."""
    return decode_event(decode_frame(data.decode("utf-8")))


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "event": frame,
    "frame_bytes": decode_frame,  # a binary frame: bytes where text is expected
    "page": lambda b: decode_page(b, lenient=False),
    "page_bytes": lambda b: decode_page(b, lenient=False),
    "op_results": decode_op_results,
    "history": decode_history,
}


def sample(name: str) -> dict[str, Any]:
    return json.loads((WIRE / "valid" / f"{name}.json").read_text())


# --- round trip of every event type -----------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for any value of a field type used in the events."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is str:
        return TEXT
    if tp is int:
        return st.integers(INT_MIN, INT_MAX)
    if tp is bool:
        return st.booleans()
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else strategy_for(a) for a in args))
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    raise AssertionError(f"no strategy for field type {tp!r}: extend strategy_for")


#: Numbered in every v1 event; None only from a Matrix transport, and refused by the v1 decoder
#: (test_v1_refuses_events_without_positions).
V1_NUMBERS = ("pos", "seq", "read_seq")


def events_of(cls: type[ServerEvent]) -> st.SearchStrategy[ServerEvent]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in attrs.fields(cls)}
    if issubclass(cls, DurableEvent):
        fields.update({n: st.integers(INT_MIN, INT_MAX) for n in V1_NUMBERS if n in fields})
    return st.builds(cls, **fields)


@pytest.mark.parametrize("name", V1_NUMBERS)
def test_v1_refuses_events_without_positions(name: str) -> None:
    raw = {"type": "read_receipt", "pos": 1, "conversation_id": "c", "seq": 1, "ts_ms": 0}
    raw |= {"user": "u", "read_seq": 1, name: None}
    with pytest.raises(WireError, match=name):
        decode_event(raw)


@pytest.mark.parametrize("type_name", sorted(SERVER_EVENT_TYPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_event_type_round_trips(type_name: str, data: st.DataObject) -> None:
    event = data.draw(events_of(SERVER_EVENT_TYPES[type_name]))
    encoded = encode_event(event)
    assert encoded["type"] == type_name
    text = orjson.dumps(encoded).decode()
    assert frame(text.encode()) == event
    assert decode_event(orjson.loads(dumps(event))) == event


def test_the_64_bit_limits_round_trip() -> None:
    for value in (INT_MIN, INT_MAX):
        ev = MessageReceived(
            pos=INT_MAX,
            conversation_id="c",
            seq=value,
            ts_ms=0,
            message_id="m",
            sender="s",
            body="",
        )
        assert decode_event(orjson.loads(dumps(ev))) == ev


def test_unknown_event_round_trips_its_raw_data() -> None:
    raw = sample("unknown_type")
    ev = decode_event(raw)
    assert isinstance(ev, UnknownEvent)
    assert (ev.raw_type, ev.pos, ev.data) == ("reaction_added", 48, raw)
    assert encode_event(ev) == raw


# --- recorded samples: valid ------------------------------------------------------------------

EVENT_SAMPLES = sorted(
    p.stem
    for p in (WIRE / "valid").glob("*.json")
    if not p.stem.startswith(("page", "op_results", "history"))
)


def test_there_is_a_valid_sample_of_every_event_type() -> None:
    seen = {sample(name)["type"] for name in EVENT_SAMPLES}
    assert set(SERVER_EVENT_TYPES) <= seen


@pytest.mark.parametrize("name", EVENT_SAMPLES)
def test_valid_event_samples_decode_and_re_encode(name: str) -> None:
    raw = sample(name)
    ev = frame((WIRE / "valid" / f"{name}.json").read_bytes())
    cls = SERVER_EVENT_TYPES.get(raw["type"], UnknownEvent)
    assert type(ev) is cls
    if cls is UnknownEvent:
        return  # its round trip is test_unknown_event_round_trips_its_raw_data
    known = {f.name for f in attrs.fields(cls)} | {"type"}
    # unknown fields (a newer server) are ignored; every known one comes back as it was
    assert orjson.loads(dumps(ev)) == {k: v for k, v in raw.items() if k in known}


def test_extra_fields_are_ignored() -> None:
    raw = sample("extra_fields")
    assert {"reactions", "thread_id", "priority"} <= set(raw)
    plain = {k: v for k, v in raw.items() if k not in ("reactions", "thread_id", "priority")}
    assert decode_event(raw) == decode_event(plain)


def test_page_sample() -> None:
    page = decode_page((WIRE / "valid" / "page.json").read_bytes())
    assert isinstance(page, EventPage)
    assert (page.next, page.has_more, page.bad) == (60, True, ())
    assert [type(e).__name__ for e in page.events] == [
        "MessageReceived",
        "MessageUpdated",
        "UnknownEvent",
        "ConversationUpdated",
    ]
    members = page.events[3]
    assert isinstance(members, ConversationUpdated)
    assert members.members == ("alice", "bob", "carol")
    empty = decode_page((WIRE / "valid" / "page_empty.json").read_text())
    assert (empty.events, empty.next, empty.has_more) == ((), 60, False)


def test_unknown_events_in_a_page_are_kept_and_counted_by_the_store(tmp_path: Path) -> None:
    page = decode_page((WIRE / "valid" / "page.json").read_bytes())
    with open_store(tmp_path / "s.db") as store:
        result = store.apply_events(page.events, cursor=page.next)
        assert (result.unknown, result.applied) == (1, 3)
        assert store.get_meta("unknown_events") == "1"
        assert store.cursor() == 60


def test_op_results_sample() -> None:
    results = decode_op_results((WIRE / "valid" / "op_results.json").read_bytes())
    assert [r.status for r in results] == ["applied", "duplicate", "rejected"]
    assert all(isinstance(r, OpResult) for r in results)
    assert (results[0].seq, results[0].pos, results[0].message_id is not None) == (7, 41, True)
    assert (results[2].code, results[2].status_code, results[2].seq) == ("not_found", 404, None)


def test_history_sample() -> None:
    hist = decode_history((WIRE / "valid" / "history.json").read_bytes())
    assert isinstance(hist, HistoryPageWire) and hist.end_of_history
    assert [(m.seq, m.deleted, m.edited_ms is not None) for m in hist.messages] == [
        (2, False, False),
        (3, True, False),
        (5, False, True),
    ]


# --- recorded samples: malformed ------------------------------------------------------------


def test_every_malformed_sample_is_listed() -> None:
    assert sorted(p.name for p in (WIRE / "malformed").iterdir()) == sorted(MALFORMED)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_sample_raises_wire_error_naming_the_field(name: str) -> None:
    spec = MALFORMED[name]
    data = load(WIRE / "malformed" / name)
    with pytest.raises(WireError) as info:
        DECODERS[spec["decoder"]](data)
    assert info.value.field == spec["field"], str(info.value)
    assert str(info.value).startswith(f"{spec['field']}: ")


def test_oversized_and_deep_samples_are_what_they_claim() -> None:
    assert len(load(WIRE / "malformed" / "oversized_frame.json.gz")) > MAX_FRAME_BYTES
    deep = load(WIRE / "malformed" / "nested_1e5.json.gz")
    assert deep.count(b"[") == 100_000


def test_a_lenient_page_sets_a_poison_event_aside() -> None:
    page = decode_page(load(WIRE / "malformed" / "page_bad_event.json"))
    assert len(page.events) == 1 and len(page.bad) == 1
    raw, error = page.bad[0]
    assert orjson.loads(raw)["seq"] == "8" and error.startswith("events[1].seq: ")


def test_frame_size_limit_counts_bytes_not_characters() -> None:
    text = orjson.dumps({"type": "error", "code": "x", "reason": "é" * (MAX_FRAME_BYTES // 2 + 10)})
    assert len(text.decode()) < MAX_FRAME_BYTES < len(text)
    with pytest.raises(WireError, match="too large"):
        decode_frame(text.decode())
    assert decode_json("[1]", limit=3) == [1]


# --- fuzz: nothing but WireError, ever ------------------------------------------------------


def only_wire_errors(fn: Callable[[Any], Any], data: Any) -> Any:
    try:
        return fn(data)
    except WireError as exc:
        assert isinstance(exc.field, str) and exc.field
        return exc


ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=200)  # surrogates too
JSONISH = st.text(alphabet='{}[]":,0123456789.eE+-truefalsnNIy \\u"', max_size=80)


@FUZZ
@given(data=st.one_of(ANY_TEXT, JSONISH, st.binary(max_size=200)))
def test_decode_frame_and_page_raise_only_wire_error(data: str | bytes) -> None:
    result = only_wire_errors(decode_frame, data)
    if isinstance(data, bytes):
        assert isinstance(result, WireError) and result.field == "frame"
    for lenient in (True, False):
        page = only_wire_errors(lambda d, lenient=lenient: decode_page(d, lenient=lenient), data)
        assert isinstance(page, EventPage | WireError)
    only_wire_errors(decode_op_results, data)
    only_wire_errors(decode_history, data)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, 2**64 - 1)  # what orjson reads as integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
# values that sit just outside what a field accepts
BREAKERS = (
    JSON_VALUES
    | st.integers(INT_MAX - 1, 2**64 - 1)
    | st.integers(INT_MIN, INT_MIN + 1)
    | st.text(max_size=3)
    | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
)
FIELD_NAMES = sorted(
    {f.name for cls in SERVER_EVENT_TYPES.values() for f in attrs.fields(cls)}
    | {f.name for f in attrs.fields(OpResult)}
    | {"message_id", "edited_ms", "deleted", "messages", "end_of_history"}
)


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-right events: a real type and real field names, with values of any JSON type
    (and sometimes a valid event with one field broken)."""
    cls = draw(st.sampled_from(sorted(SERVER_EVENT_TYPES.values(), key=lambda c: c.type)))
    if draw(st.booleans()):
        obj = encode_event(draw(events_of(cls)))
        obj[draw(st.sampled_from(sorted(obj)))] = draw(BREAKERS)
        return obj
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), JSON_VALUES, max_size=8))
    return {"type": draw(st.sampled_from([cls.type, "other"])), **fields}


@FUZZ
@given(
    events=st.lists(event_like() | JSON_VALUES, max_size=4),
    nxt=JSON_VALUES | st.integers(0, 10),
    more=JSON_VALUES | st.booleans(),
)
def test_structured_garbage_raises_only_wire_error(events: list[Any], nxt: Any, more: Any) -> None:
    for ev in events:
        result = only_wire_errors(decode_event, ev)
        assert isinstance(result, ServerEvent | WireError)
        text = orjson.dumps(ev, option=orjson.OPT_NON_STR_KEYS).decode()
        only_wire_errors(decode_frame, text)
    body = orjson.dumps({"events": events, "next": nxt, "has_more": more})
    for lenient in (True, False):
        only_wire_errors(lambda d, lenient=lenient: decode_page(d, lenient=lenient), body)
    only_wire_errors(decode_op_results, orjson.dumps({"results": events}))
    only_wire_errors(decode_history, orjson.dumps({"messages": events, "end_of_history": more}))


@settings(max_examples=300, deadline=None)
@given(ev=event_like())
def test_what_decodes_decodes_faithfully_and_fits_the_store(ev: dict[str, Any]) -> None:
    """An accepted event says exactly what its JSON said (no "bob" read as ("b", "o", "b"),
    no coercion), with integers SQLite can bind, so apply_events meets no foreign error."""
    result = only_wire_errors(decode_event, ev)
    if isinstance(result, WireError | UnknownEvent):
        return
    back = orjson.loads(dumps(result))
    assert {k: back[k] for k in ev if k in back} == {k: v for k, v in ev.items() if k in back}
    for f in attrs.fields(type(result)):
        value = getattr(result, f.name)
        if type(value) is int:
            assert INT_MIN <= value <= INT_MAX
