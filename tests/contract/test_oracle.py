"""The oracle itself can fail: each verdict is checked on fabricated server truths."""

from __future__ import annotations

from typing import Any

from tests.contract.oracle import Oracle


def _msg(cid: str, seq: int, op_id: str | None, body: str, sender: str = "alice") -> dict[str, Any]:
    return {
        "message_id": f"m{seq}",
        "conversation_id": cid,
        "seq": seq,
        "op_id": op_id,
        "sender": sender,
        "body": body,
    }


def test_oracle_flags_lost_duplicated_unexpected_and_recovered() -> None:
    oracle = Oracle("unit", 1)
    a = oracle.attempt("c", "alice", "one")
    oracle.returned(a)
    b = oracle.attempt("c", "alice", "two")
    oracle.returned(b)
    c = oracle.attempt("c", "alice", "three")  # never returned
    fig = oracle.check_server(
        {
            "c": [
                _msg("c", 1, b, "two"),
                _msg("c", 2, b, "two"),  # the same op twice
                _msg("c", 3, c, "three"),  # landed though the call never returned
                _msg("c", 4, "stranger", "who?"),  # never attempted
                _msg("c", 5, None, "bob's", sender="bob"),  # another user's: not ours to judge
            ]
        }
    )
    assert fig.lost == [a]
    assert fig.duplicated == [b]
    assert fig.recovered == [c]
    assert len(fig.unexpected) == 1 and "stranger" in fig.unexpected[0]
    assert not fig.ok


def test_oracle_flags_a_resend_under_a_new_op_id_as_duplicate() -> None:
    oracle = Oracle("unit", 1)
    a = oracle.attempt("c", "alice", "hello")
    oracle.returned(a)
    fig = oracle.check_server({"c": [_msg("c", 1, a, "hello"), _msg("c", 2, "x", "hello")]})
    assert fig.duplicated == [a] and fig.unexpected


def test_divergence_names_the_store_that_differs() -> None:
    class FakeStore:
        def __init__(self, rows: list[tuple[Any, ...]]) -> None:
            self.rows = rows

        def messages(self, cid: str, limit: int) -> list[Any]:
            from types import SimpleNamespace

            return [
                SimpleNamespace(id=r[0], seq=r[1], op_id=r[2], sender=r[3], body=r[4])
                for r in self.rows
            ]

    oracle = Oracle("unit", 1)
    truth = {"c": [_msg("c", 1, "o1", "a"), _msg("c", 2, "o2", "b")]}
    good = FakeStore([("m1", 1, "o1", "alice", "a"), ("m2", 2, "o2", "alice", "b")])
    echo = FakeStore([("m1", 1, "o1", "alice", "a"), (None, None, "o2", "alice", "b")])
    swapped = FakeStore([("m2", 2, "o2", "alice", "b"), ("m1", 1, "o1", "alice", "a")])
    assert oracle.divergence(truth, {"good": (good, ["c"])}) == []
    assert oracle.divergence(truth, {"echo": (echo, ["c"])})[0].startswith("echo/")
    assert oracle.divergence(truth, {"swapped": (swapped, ["c"])})
