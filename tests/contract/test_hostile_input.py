"""Hostile input from a server (G4, G7): no crash, bad input quarantined, the link recovers.

A scripted server (:mod:`tests.contract.hostile`) puts on the wire what a broken or malicious
server could: oversize frames, nesting 10^5 deep, NaN, lone surrogates, binary frames, unknown
types, schema mismatches, duplicate and out-of-order events, poison events (well-formed, but
the store cannot take them), integers beyond 64 bits, a typing flood, and malformed REST
bodies. After each barrage the engine must not be FAILED, must reach LIVE again, must hold
exactly the valid messages, each once, with the cursor past everything (poison events
quarantined, not blocking the stream).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine import SyncEngine
from syncengine.events import SERVER_EVENT_TYPES
from syncengine.models import ConnectionState, new_id
from tests.conftest import FAST
from tests.contract.hostile import HostileServer
from tests.contract.oracle import TIME_FACTOR, eventually, scale

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[tuple[HostileServer, SyncEngine]]:
    async with HostileServer() as srv:
        engine = SyncEngine(tmp_path / "victim.db", **FAST)
        async with engine:
            await engine.login(srv.url, "alice", "pw")
            assert await engine.wait_for_state(ConnectionState.LIVE, 10 * TIME_FACTOR)
            yield srv, engine


def stored(engine: SyncEngine, srv: HostileServer) -> list[tuple[str | None, int | None]]:
    return [(m.id, m.seq) for m in engine.store.messages(srv.conversation_id, limit=100_000)]


def expected(srv: HostileServer, poison: set[str]) -> list[tuple[str, int]]:
    return [
        (e["message_id"], e["seq"]) for e in srv.valid_messages() if e["message_id"] not in poison
    ]


async def settle(srv: HostileServer, engine: SyncEngine, poison: set[str]) -> None:
    """A last valid event; then the store must equal the valid log and the engine be LIVE."""
    ev = srv.append(body="sentinel")
    await srv.live(ev)
    await eventually(
        lambda: (
            stored(engine, srv) == expected(srv, poison)
            and engine.store.cursor() == srv.head
            and engine.state is ConnectionState.LIVE
        ),
        timeout=20,
        what=f"store equals the valid log; state {engine.state}; cursor "
        f"{engine.store.cursor()}/{srv.head}",
    )


def frame_text(ev: dict[str, Any]) -> str:
    return orjson.dumps(ev).decode()


async def test_hostile_live_frames(hostile: Any) -> None:
    srv, engine = hostile
    base = srv.event()
    p = base["pos"]
    barrage: list[Any] = [
        "[" * 100_000 + "]" * 100_000,  # nesting 10^5 deep
        frame_text(base).replace(f'"seq":{base["seq"]}', '"seq":NaN'),
        frame_text(base).replace('"body":"valid', '"body":"\\ud800 valid'),  # lone surrogate
        b"\x00\x01binary\xff",
        frame_text({**base, "seq": str(base["seq"])}),  # schema mismatch
        frame_text({**base, "seq": True}),
        frame_text({"type": 7}),
        "not json at all",
        "[]",
        frame_text({"type": "reaction_added", "pos": p, "emoji": "x"}),  # unknown type
        frame_text({"type": "error", "code": "x", "reason": "y"}),
        "",
    ]
    await srv.live(*barrage)
    # Valid events, duplicated and out of order (a gap, then the missing one).
    a, b, c = srv.append(), srv.append(), srv.append()
    await srv.live(c, a, a, b, c)
    # A typing flood.
    await srv.live(
        *[
            {
                "type": "typing_started",
                "conversation_id": srv.conversation_id,
                "user": f"u{i % 50}",
                "ttl_ms": 8000,
                "ts_ms": i,
            }
            for i in range(3000)
        ]
    )
    await settle(srv, engine, set())
    assert len(engine.store.typing(srv.conversation_id)) <= 50
    assert engine.store.quarantined(), "bad frames must be kept for inspection"
    # An oversize frame: the client closes the link (1009); it must reconnect and catch up.
    connects = srv.live_connects
    await srv.live("x" * (2 << 20))
    d = srv.append()
    await eventually(lambda: srv.live_connects > connects, what="reconnect after oversize")
    await settle(srv, engine, set())
    assert d["message_id"] in {m for m, _ in stored(engine, srv)}


async def test_poison_events_are_quarantined_and_the_cursor_moves_on(hostile: Any) -> None:
    srv, engine = hostile
    poison: set[str] = set()
    # 1. Well-formed JSON of the wrong schema, in the log: pulled, quarantined, passed over.
    bad = srv.event(seq="seven")
    poison.add(bad["message_id"])
    srv.append_raw(frame_text(bad), bad["pos"])
    # 2. Integers beyond what the store can hold (SQLite is 64-bit signed).
    huge = srv.event(seq=1 << 63)
    poison.add(huge["message_id"])
    srv.append_raw(frame_text(huge), huge["pos"])
    after = srv.append()
    await srv.live(after)  # the live copy announces the tail: a pull fetches the rest
    await settle(srv, engine, poison)
    assert len(engine.store.quarantined()) == 2
    # 3. A store-level poison: our own unacknowledged echo "confirmed" at a seq another
    # message already holds (a lying server). The store refuses it; it is isolated by
    # bisection from the valid events of its batch, quarantined, and the cursor moves on.
    # (Were the lie in the same batch as the message it clashes with, the store would keep
    # whichever it applies first: a server that breaks seq uniqueness cannot be undone.)
    taken = srv.append()
    await srv.live(taken)
    await eventually(lambda: engine.store.cursor() == srv.head, what="taken stored")
    srv.fail_pushes = True
    op_id = new_id()
    await engine.send(srv.conversation_id, "mine", op_id=op_id)
    clash = srv.event(seq=taken["seq"], op_id=op_id, sender="alice", body="mine")
    poison.add(clash["message_id"])
    srv.append_raw(frame_text(clash), clash["pos"])
    tail = srv.append()
    await srv.live(clash, tail)
    await eventually(
        lambda: engine.store.cursor() == srv.head, what="the cursor moved past the poison"
    )
    assert len(engine.store.quarantined()) == 3
    assert clash["message_id"] not in {m for m, _ in stored(engine, srv)}
    srv.fail_pushes = False  # the real send goes through and replaces the echo
    await settle(srv, engine, poison)
    mine = engine.store.message_by_op(op_id)
    assert mine is not None and mine.seq is not None and mine.seq != taken["seq"]
    assert engine.state is ConnectionState.LIVE


@pytest.mark.parametrize(
    "body",
    [
        b'{"events": [], "next": "x", "has_more": false}',
        b'{"events": {}, "next": 1, "has_more": false}',
        b'{"events": [], "next": -5, "has_more": false}',
        b'{"events": [], "next": 18446744073709551615, "has_more": false}',
        b"[" * 5000 + b"]" * 5000,
        b"",
        b"\xff\xfe garbage",
    ],
    ids=["next-str", "events-obj", "next-neg", "next-huge", "deep", "empty", "garbage"],
)
async def test_malformed_pages_do_not_stop_sync(hostile: Any, body: bytes) -> None:
    srv, engine = hostile
    served = 0

    def bad_page(since: int) -> tuple[int, bytes]:
        nonlocal served
        served += 1
        if served >= 3:
            srv.page_override = None
        return 200, body

    srv.page_override = bad_page
    await srv.live(srv.append())  # live event; a safety pull soon hits the bad pages
    ev = srv.append()
    await srv.live(ev)
    await eventually(lambda: srv.page_override is None, timeout=15, what="bad pages served")
    await asyncio.sleep(0.2)
    assert engine.state is not ConnectionState.FAILED, engine.state
    await settle(srv, engine, set())


@pytest.mark.parametrize(
    "results",
    [
        b'{"results": 5}',
        b'{"results": [{"status": "applied"}]}',
        b'{"results": [{"op_id": 1, "status": "applied"}]}',
        b"<html>not json</html>",
    ],
    ids=["results-int", "no-op-id", "op-id-int", "html"],
)
async def test_malformed_push_results_do_not_stop_sync(hostile: Any, results: bytes) -> None:
    srv, engine = hostile
    served = 0

    def bad_results() -> bytes:
        nonlocal served
        served += 1
        if served >= 2:
            srv.push_override = None  # from the third push on, the server answers properly
        return results

    srv.push_override = bad_results
    op_id = new_id()
    await engine.send(srv.conversation_id, "through a broken push", op_id=op_id)
    await eventually(lambda: srv.push_override is None, timeout=20, what="bad replies served")
    assert await engine.wait_for_pending(20 * TIME_FACTOR)
    assert engine.state is not ConnectionState.FAILED
    await settle(srv, engine, set())
    assert op_id in {e.get("op_id") for e in srv.valid_messages()}


# --- Hypothesis: the decoder fuzzed through the live path -----------------------------------


class LiveHarness:
    """A hostile server and a victim engine on a loop of their own (Hypothesis calls the test
    synchronously, many times, against one running pair)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.srv: HostileServer | None = None
        self.engine: SyncEngine | None = None
        self.examples = 0

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout * TIME_FACTOR)

    async def start(self) -> None:
        self.srv = await HostileServer().start()
        self.engine = SyncEngine(self.db, **FAST)
        await self.engine.open()
        await self.engine.login(self.srv.url, "alice", "pw")
        assert await self.engine.wait_for_state(ConnectionState.LIVE, 10 * TIME_FACTOR)

    async def play(self, recipes: list[tuple[Any, ...]]) -> None:
        srv, engine = self.srv, self.engine
        assert srv is not None and engine is not None
        await srv.live(*[materialize(srv, r) for r in recipes])
        await settle(srv, engine, set())

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        if self.srv is not None:
            await self.srv.stop()

    def close(self) -> None:
        self.run(self.stop())

        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_harness(tmp_path_factory: pytest.TempPathFactory) -> Any:
    harness = LiveHarness(tmp_path_factory.mktemp("fuzz") / "victim.db")
    harness.run(harness.start())
    yield harness
    harness.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["type", "pos", "conversation_id", "seq", "ts_ms", "message_id", "op_id", "sender", "body"]


#: Frame recipes: pure data drawn by Hypothesis, turned into frames at play time against the
#: server's log (so that generation never depends on the state of the run).
RECIPES = st.one_of(
    st.tuples(st.just("text"), st.text(st.characters(exclude_categories=("Cs",)), max_size=200)),
    st.tuples(st.just("bytes"), st.binary(max_size=200)),
    st.tuples(st.just("json"), JSON),
    st.tuples(st.just("valid")),
    st.tuples(st.just("dup"), st.integers(0, 19)),
    st.tuples(
        st.just("mutant"),
        st.integers(0, 19),
        st.sampled_from(FIELDS),
        st.sampled_from(["drop", "replace", "type"]),
        JSON,
        st.sampled_from([*SERVER_EVENT_TYPES, "zzz", ""]),
    ),
)


def materialize(srv: HostileServer, recipe: tuple[Any, ...]) -> Any:
    """The frame a recipe describes (``valid`` appends a new event to the log)."""
    kind = recipe[0]
    if kind in ("text", "bytes"):
        return recipe[1]
    if kind == "json":
        return json.dumps(recipe[1])  # big integers and lone-surrogate escapes allowed
    if kind == "valid":
        return srv.append()
    logged = [orjson.loads(t) for _, t in srv.log[-20:]]
    base = dict(logged[recipe[1] % len(logged)])
    if kind == "dup":
        return base
    _, _, field, action, value, new_type = recipe
    if action == "drop":
        base.pop(field, None)
    elif action == "replace":
        base[field] = value
    else:
        base["type"] = new_type
    return json.dumps(base)


# The engine under test runs on another thread and draws its backoff jitter from ``random``
# while Hypothesis generates the next example; generation does not depend on it.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.timeout(3600 if scale(1) > 1 else 120)
def test_live_decoder_fuzzed_through_the_engine(live_harness: LiveHarness) -> None:
    """Random frames on the live channel never stop sync; valid events are all stored."""

    @settings(
        max_examples=scale(100),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=False,
    )
    @given(recipes=st.lists(RECIPES, min_size=1, max_size=15))
    def check(recipes: list[tuple[Any, ...]]) -> None:
        live_harness.examples += 1
        live_harness.run(live_harness.play(recipes))

    check()
    engine = live_harness.engine
    assert engine is not None
    assert live_harness.run(asyncio.sleep(0, engine.store.integrity_check())) == "ok"
    print(
        f"[hostile live fuzz] examples={live_harness.examples} "
        f"quarantined={len(engine.store.quarantined())} "
        f"messages={engine.store.message_count()}"
    )
