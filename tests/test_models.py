"""Domain types: time-ordered ids (UUID version 7 layout) and the frozen models."""

from __future__ import annotations

import re
import time
import uuid

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncengine.models import (
    ConnectionState,
    Message,
    MessageState,
    SyncHealth,
    new_id,
)

CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MAX_MS = (1 << 48) - 1


def ms_of(value: str) -> int:
    """The 48-bit millisecond timestamp at the front of a version 7 UUID."""
    return uuid.UUID(value).int >> 80


def test_new_id_is_a_canonical_uuid_version_7() -> None:
    for _ in range(200):
        value = new_id()
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert CANONICAL.match(value) and str(parsed) == value


def test_new_id_carries_the_current_time() -> None:
    before = int(time.time() * 1000)
    value = new_id()
    after = int(time.time() * 1000)
    assert before <= ms_of(value) <= after


def test_new_id_carries_the_given_time() -> None:
    assert ms_of(new_id(1_764_100_000.123)) == 1_764_100_000_123
    assert ms_of(new_id(0)) == 0


def test_ids_made_in_the_same_millisecond_are_distinct() -> None:
    ids = {new_id(1_764_100_000.5) for _ in range(20_000)}
    assert len(ids) == 20_000


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, MAX_MS), min_size=2, max_size=30, unique=True))
def test_ids_sort_in_time_order(times_ms: list[int]) -> None:
    # half a millisecond in, so float rounding cannot move a time to its neighbour
    ids = [new_id((ms + 0.5) / 1000) for ms in times_ms]
    by_time = [i for _, i in sorted(zip(times_ms, ids, strict=True))]
    assert sorted(ids) == by_time  # string order (what SQLite indexes) is time order
    assert [ms_of(i) for i in ids] == times_ms


def test_successive_ids_sort_after_earlier_ones() -> None:
    start = 1_764_100_000.0005
    ids = [new_id(start + n / 1000) for n in range(0, 5_000, 7)]
    assert ids == sorted(ids)


def test_models_are_frozen_and_keyword_only() -> None:
    msg = Message(
        conversation_id="c",
        op_id=None,
        id="m",
        seq=1,
        sender="bob",
        body="hi",
        state=MessageState.SENT,
        created_at=1.0,
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        msg.body = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Message("c", None, "m", 1, "bob", "hi", MessageState.SENT, 1.0)  # type: ignore[misc]
    assert attrs.evolve(msg, body="x") != msg


@pytest.mark.parametrize(
    ("pending", "sending", "gaps", "in_sync"),
    [(0, 0, 0, True), (1, 0, 0, False), (0, 1, 0, False), (0, 0, 1, False)],
)
def test_health_in_sync_only_when_nothing_waits(
    pending: int, sending: int, gaps: int, in_sync: bool
) -> None:
    health = SyncHealth(
        state=ConnectionState.LIVE,
        pending=pending,
        sending=sending,
        failed=3,  # parked failures do not make the store out of sync; status shows them
        oldest_pending_age_s=None,
        cursor=0,
        last_sync_at=None,
        open_gaps=gaps,
        conversations=0,
        messages=0,
    )
    assert health.in_sync is in_sync
