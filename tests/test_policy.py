"""The one status table (``core/policy.py``) and what is derived from it.

Pure: no server, no socket, no clock. The REST transport's own use of the table is tested
through ``httpx.MockTransport`` in ``tests/test_transport_rest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncengine.core.policy import (
    PERMANENT_STATUSES,
    STATUS_TABLE,
    Disposition,
    RetryAfterGate,
    classify,
    classify_status,
    error_for_close,
    error_for_handshake,
    error_for_status,
    rate_limit_wait,
    retry_after_seconds,
    status_rule,
    status_table_markdown,
)
from syncengine.errors import (
    AuthFailed,
    CursorExpired,
    RateLimited,
    Rejected,
    ServerUnavailable,
    SyncEngineError,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"

# status -> (disposition, REST error type): the classes the issue names, one row each.
EXPECTED: dict[int, tuple[Disposition, type[SyncEngineError]]] = {
    400: (Disposition.FAIL_OP, Rejected),
    401: (Disposition.LOGIN, AuthFailed),
    403: (Disposition.FAIL_OP, Rejected),
    404: (Disposition.FAIL_OP, Rejected),
    408: (Disposition.RETRY, ServerUnavailable),
    409: (Disposition.FAIL_OP, Rejected),
    410: (Disposition.RESYNC, CursorExpired),
    413: (Disposition.FAIL_OP, Rejected),
    418: (Disposition.FAIL_OP, Rejected),  # any other 4xx is permanent for the operation
    422: (Disposition.FAIL_OP, Rejected),
    429: (Disposition.RETRY, RateLimited),
    451: (Disposition.FAIL_OP, Rejected),
    500: (Disposition.RETRY, ServerUnavailable),
    501: (Disposition.RETRY, ServerUnavailable),  # any other 5xx is retried
    502: (Disposition.RETRY, ServerUnavailable),
    503: (Disposition.RETRY, ServerUnavailable),
    504: (Disposition.RETRY, ServerUnavailable),
    599: (Disposition.RETRY, ServerUnavailable),
    302: (Disposition.RETRY, Rejected),  # a redirect is not followed and not a verdict
}


@pytest.mark.parametrize(("status", "expected"), sorted(EXPECTED.items()))
def test_every_status_has_its_disposition_and_error(
    status: int, expected: tuple[Disposition, type[SyncEngineError]]
) -> None:
    disposition, error = expected
    assert classify_status(status) is disposition
    exc = error_for_status(status, f"http_{status}", "why", retry_after=1.5)
    assert type(exc) is error
    # The exception the transport raises and the status agree on what the engine does.
    assert classify(exc) is disposition


def test_every_status_code_classifies_the_same_by_status_and_by_error() -> None:
    for status in range(100, 600):
        exc = error_for_status(status, "c", "r")
        assert classify(exc) is classify_status(status), status


def test_plain_500_and_friends_are_never_permanent() -> None:
    # One plain 500 on a push must not park the message as FAILED for good.
    for status in (500, 502, 503, 504, 408, 429):
        assert classify_status(status) is Disposition.RETRY, status
        assert status not in PERMANENT_STATUSES


def test_permanent_statuses_are_derived_from_the_table() -> None:
    assert frozenset({400, 403, 404, 409, 413, 422}) == PERMANENT_STATUSES
    assert all(STATUS_TABLE[s].disposition is Disposition.FAIL_OP for s in PERMANENT_STATUSES)


def test_error_messages_and_fields() -> None:
    rejected = error_for_status(413, "too_large", "body too big")
    assert isinstance(rejected, Rejected)
    assert (rejected.code, rejected.reason, rejected.status) == ("too_large", "body too big", 413)
    assert str(error_for_status(401, "unauthorized", "bad token")) == "unauthorized: bad token"
    assert str(error_for_status(410, "cursor_expired", "old")) == "cursor_expired: old"
    assert str(error_for_status(503, "http_503", "down")) == "server error 503: down"
    limited = error_for_status(429, "rate_limited", "slow down", retry_after=2.0)
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0
    unlimited = error_for_status(429, "rate_limited", "slow down")
    assert isinstance(unlimited, RateLimited) and unlimited.retry_after is None
    # retry_after means nothing outside 429
    assert not hasattr(error_for_status(503, "c", "r", retry_after=9), "retry_after")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthFailed),
        (500, ServerUnavailable),
        (502, ServerUnavailable),
        (503, ServerUnavailable),
        (504, ServerUnavailable),
        (400, None),
        (403, None),
        (404, None),
        (408, None),
        (410, None),
        (426, None),
        (429, None),
        (200, None),
        (302, None),
    ],
)
def test_refused_live_handshake(status: int, error: type[SyncEngineError] | None) -> None:
    got = error_for_handshake(status)
    if error is None:
        assert got is None  # the live path is refused: poll over REST
    else:
        assert type(got) is error
    assert status_rule(status).on_handshake is error


def test_live_close_codes() -> None:
    assert type(error_for_close(1008, "unauthorized")) is AuthFailed
    assert type(error_for_close(1008, "policy")) is ServerUnavailable
    lost = error_for_close(1011, "internal error")
    assert type(lost) is ServerUnavailable
    assert str(lost) == "live channel closed (code 1011 internal error)"
    assert str(error_for_close(None, "")) == "live channel closed (code None)"


@pytest.mark.parametrize(
    ("header", "body_ms", "expected"),
    [
        ("2", None, 2.0),
        ("1", 20, 0.02),  # the body's milliseconds win over the header's whole seconds
        ("2", "soon", 2.0),  # a body that names no number: the header's
        ("-3", None, 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 1500, 1.5),  # unreadable header: the body's
        ("soon", None, None),
        (None, 1500, 1.5),
        (None, 2, 0.002),
        (None, -5, 0.0),
        (None, True, None),  # a JSON boolean is not a number of milliseconds
        (None, "1500", None),
        (None, None, None),
        ("", None, None),
    ],
)
def test_retry_after_seconds(header: str | None, body_ms: object, expected: float | None) -> None:
    assert retry_after_seconds(header, body_ms) == expected


def test_retry_after_gate_holds_every_request_until_the_pause_passed() -> None:
    gate = RetryAfterGate()
    assert gate.wait(100.0) == 0.0
    gate.hold(100.0, 5.0)
    assert gate.wait(101.0) == 4.0
    assert gate.wait(105.0) == 0.0
    assert gate.wait(200.0) == 0.0
    gate.hold(200.0, 1.0)
    assert gate.wait(200.5) == 0.5


def test_architecture_doc_prints_the_status_table() -> None:
    assert status_table_markdown() in DOC.read_text(), (
        "regenerate: python -m syncengine.core.policy"
    )


@pytest.mark.parametrize(
    ("retry_after", "remaining", "expected"),
    [
        (0.02, 10.0, 0.02),  # the server's pause fits: wait it out
        (5.0, 4.0, None),  # it does not: give up now rather than sleep into the deadline
        (5.0, 5.0, None),
        (None, 10.0, 1.0),  # no pause named: a second
        (None, 0.5, None),
        (-1.0, 1.0, 0.0),
    ],
)
def test_a_one_shot_sync_waits_out_a_429_that_fits_its_timeout(
    retry_after: float | None, remaining: float, expected: float | None
) -> None:
    assert rate_limit_wait(retry_after, remaining) == expected
