"""The delivery oracle (after Jepsen's total-queue checker), shared by every scenario.

Record every operation attempted (its op id, body, conversation and sender) and every one
whose call returned. After the faults heal and sync goes quiet, compare with the server's
truth (``srv.state.all_messages(cid)``) and with each member's store:

- lost: acknowledged (the call returned) but not on the server: must be empty;
- duplicated: on the server more than once (by op id or by body): must be empty;
- unexpected: on the server but never attempted: must be empty;
- converged: every member's store holds exactly the server's messages of its conversations,
  in the server's order, each once, with no local echo left over;
- recovered: on the server though the call never returned: reported, allowed.

Every scenario prints its figures (and appends them as a JSON line to the file named by
``SYNCENGINE_FIGURES``, if set); ``python -m tests.contract.oracle FILE`` renders that file as
the Markdown tables of ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from syncengine.models import new_id

__all__ = [
    "TIME_FACTOR",
    "Attempt",
    "Figures",
    "Oracle",
    "eventually",
    "render_markdown",
    "scale",
    "soak",
    "soak_only",
]

#: Multiplier of every time bound (``SYNCENGINE_TIME_FACTOR``, default 2: the machine is
#: shared). The convergence figure documented is 10 s; it is asserted against 10 s x this.
TIME_FACTOR = float(os.environ.get("SYNCENGINE_TIME_FACTOR") or 2.0)


def soak() -> bool:
    """True when the soak tier runs (``SYNCENGINE_SOAK=1``)."""
    return os.environ.get("SYNCENGINE_SOAK", "") not in ("", "0")


#: Marks a test that runs only in the soak tier.
soak_only = pytest.mark.skipif(not soak(), reason="soak tier only: run with SYNCENGINE_SOAK=1")


def scale(pr: int, factor: int = 40) -> int:
    """A size for the PR tier, or ``factor`` times it in the soak tier."""
    return pr * factor if soak() else pr


async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> None:
    """Wait until ``predicate()`` (sync or async) is true; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout * TIME_FACTOR
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * TIME_FACTOR:.0f}s: {what}")
        await asyncio.sleep(interval)


@attrs.define
class Attempt:
    """One operation the application attempted."""

    op_id: str
    body: str
    conversation_id: str
    sender: str
    returned: bool = False


@attrs.define
class Figures:
    """What a scenario reports: the oracle's verdict and the numbers behind it."""

    scenario: str
    seed: int
    messages: int = 0
    attempted: int = 0
    acknowledged: int = 0
    faults: int = 0
    fault_kinds: dict[str, int] = attrs.Factory(dict)
    lost: list[str] = attrs.Factory(list)
    duplicated: list[str] = attrs.Factory(list)
    unexpected: list[str] = attrs.Factory(list)
    recovered: list[str] = attrs.Factory(list)
    not_converged: list[str] = attrs.Factory(list)
    converge_s: float | None = None
    extra: dict[str, Any] = attrs.Factory(dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.not_converged)

    def line(self) -> str:
        conv = f"{self.converge_s:.2f}s" if self.converge_s is not None else "-"
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"[{self.scenario}] seed={self.seed} messages={self.messages} "
            f"attempted={self.attempted} acknowledged={self.acknowledged} faults={self.faults} "
            f"{dict(self.fault_kinds)} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"unexpected={len(self.unexpected)} recovered={len(self.recovered)} "
            f"converged={'yes' if not self.not_converged else 'NO'} converge={conv}{extra}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "messages": self.messages,
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "faults": self.faults,
            "fault_kinds": dict(self.fault_kinds),
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "recovered": len(self.recovered),
            "converged": not self.not_converged,
            "converge_s": None if self.converge_s is None else round(self.converge_s, 2),
            "extra": self.extra,
            "soak": soak(),
        }


class Oracle:
    """Records attempts and acknowledgements; checks the server and the stores.

    Args:
        scenario: a short name printed with the figures.
        seed: the scenario's seed (printed, so a failure can be replayed).
    """

    def __init__(self, scenario: str, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.attempts: dict[str, Attempt] = {}
        self.faults: Counter[str] = Counter()
        self.healed_at: float | None = None
        self.extra: dict[str, Any] = {}

    # --- recording ------------------------------------------------------------------------

    def attempt(
        self, conversation_id: str, sender: str, body: str, op_id: str | None = None
    ) -> str:
        """Record an attempt before the call; returns its op id."""
        op_id = op_id or new_id()
        self.attempts[op_id] = Attempt(op_id, body, conversation_id, sender)
        return op_id

    def returned(self, op_id: str) -> None:
        """Record that the call of ``op_id`` returned (durably accepted: G1)."""
        self.attempts[op_id].returned = True

    async def send(self, engine: Any, conversation_id: str, body: str) -> str:
        """``engine.send`` with the attempt and its return recorded. Errors propagate."""
        sender = engine.store.user
        op_id = self.attempt(conversation_id, sender, body)
        await engine.send(conversation_id, body, op_id=op_id)
        self.returned(op_id)
        return op_id

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] += n

    def add_faults(self, counts: Mapping[str, int]) -> None:
        for kind, n in counts.items():
            if n:
                self.faults[kind] += n

    def healed(self) -> None:
        """The last fault has healed: convergence time is measured from now."""
        self.healed_at = time.monotonic()

    @property
    def conversations(self) -> set[str]:
        return {a.conversation_id for a in self.attempts.values()}

    # --- checking -------------------------------------------------------------------------

    def check_server(self, server_messages: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figures:
        """Lost / duplicated / unexpected / recovered against the server's messages.

        Args:
            server_messages: conversation id -> ``all_messages(cid)`` of the server.
        """
        fig = Figures(scenario=self.scenario, seed=self.seed)
        fig.attempted = len(self.attempts)
        fig.acknowledged = sum(a.returned for a in self.attempts.values())
        fig.faults = sum(self.faults.values())
        fig.fault_kinds = dict(self.faults)
        fig.extra = dict(self.extra)
        senders = {a.sender for a in self.attempts.values()}
        by_op: Counter[str] = Counter()
        by_body: Counter[tuple[str, str]] = Counter()
        total = 0
        for cid, msgs in server_messages.items():
            for m in msgs:
                total += 1
                op_id = m.get("op_id")
                if op_id is not None:
                    by_op[op_id] += 1
                by_body[(cid, m["body"])] += 1
                if m.get("sender") in senders and (op_id is None or op_id not in self.attempts):
                    fig.unexpected.append(f"{cid}:{m['sender']}:{op_id}:{m['body'][:40]}")
                elif op_id in self.attempts and self.attempts[op_id].conversation_id != cid:
                    fig.unexpected.append(f"{op_id} landed in {cid}")
        fig.messages = total
        for op_id, a in self.attempts.items():
            n = by_op.get(op_id, 0)
            if n > 1 or by_body.get((a.conversation_id, a.body), 0) > 1:
                fig.duplicated.append(op_id)
            if n == 0 and a.returned:
                fig.lost.append(op_id)
            if n >= 1 and not a.returned:
                fig.recovered.append(op_id)
        return fig

    @staticmethod
    def store_view(store: Any, conversation_id: str) -> list[tuple[Any, ...]]:
        """A store's messages of a conversation as (id, seq, op_id, sender, body)."""
        return [
            (m.id, m.seq, m.op_id, m.sender, m.body)
            for m in store.messages(conversation_id, limit=1_000_000)
        ]

    @staticmethod
    def server_view(messages: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        return [(m["message_id"], m["seq"], m["op_id"], m["sender"], m["body"]) for m in messages]

    def divergence(
        self,
        server_messages: Mapping[str, Sequence[Mapping[str, Any]]],
        stores: Mapping[str, tuple[Any, Iterable[str]]],
    ) -> list[str]:
        """Why the stores differ from the server (empty when converged).

        Args:
            server_messages: conversation id -> the server's messages.
            stores: name -> (store, the conversation ids it must hold).
        """
        problems: list[str] = []
        for name, (store, cids) in stores.items():
            for cid in cids:
                mine = self.store_view(store, cid)
                truth = self.server_view(server_messages[cid])
                if mine != truth:
                    extra = len([m for m in mine if m[1] is None])
                    problems.append(
                        f"{name}/{cid[-6:]}: store {len(mine)} rows ({extra} echoes) "
                        f"vs server {len(truth)}; first difference at "
                        f"{_first_difference(mine, truth)}"
                    )
        return problems

    async def converge(
        self,
        fetch: Callable[[], Mapping[str, Sequence[Mapping[str, Any]]]],
        stores: Mapping[str, tuple[Any, Iterable[str]]],
        *,
        timeout: float = 60.0,
        until_acked: Callable[[], Awaitable[bool] | bool] | None = None,
    ) -> Figures:
        """Wait until every store equals the server (or the timeout), then check.

        Convergence time is measured from :meth:`healed` (or from this call).
        """
        start = self.healed_at if self.healed_at is not None else time.monotonic()
        deadline = time.monotonic() + timeout
        stores = {k: (s, list(c)) for k, (s, c) in stores.items()}
        problems: list[str] = ["not checked"]
        while time.monotonic() < deadline:
            truth = fetch()
            problems = self.divergence(truth, stores)
            ready = True
            if until_acked is not None:
                value = until_acked()
                ready = bool(await value) if isinstance(value, Awaitable) else bool(value)
            if not problems and ready:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - start
        fig = self.check_server(fetch())
        fig.not_converged = problems
        fig.converge_s = elapsed if not problems else None
        return fig

    def report(self, fig: Figures) -> Figures:
        """Print the figures (and append them to ``$SYNCENGINE_FIGURES``)."""
        print(fig.line())
        for kind in ("lost", "duplicated", "unexpected", "not_converged"):
            items = getattr(fig, kind)
            if items:
                print(f"  {kind}: {items[:10]}")
        path = os.environ.get("SYNCENGINE_FIGURES")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(fig.as_json()) + "\n")
        return fig

    def assert_ok(self, fig: Figures, *, converge_bound_s: float | None = None) -> None:
        """Fail unless lost, duplicated and unexpected are empty and the stores converged."""
        self.report(fig)
        assert not fig.lost, f"lost (acknowledged, not on the server): {fig.lost[:10]}"
        assert not fig.duplicated, f"duplicated on the server: {fig.duplicated[:10]}"
        assert not fig.unexpected, f"unexpected on the server: {fig.unexpected[:10]}"
        assert not fig.not_converged, f"stores did not converge: {fig.not_converged[:5]}"
        if converge_bound_s is not None:
            assert fig.converge_s is not None and fig.converge_s <= converge_bound_s, (
                f"converged in {fig.converge_s}s, bound {converge_bound_s}s"
            )


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"#{i}: store {x} / server {y}"
    return f"#{min(len(a), len(b))}: lengths {len(a)} / {len(b)}"


def render_markdown(path: str | os.PathLike[str]) -> str:
    """The figures file as a Markdown table (the last entry of each scenario wins)."""
    rows: dict[str, dict[str, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            doc = json.loads(line)
            rows[doc["scenario"]] = doc
    out = [
        "| scenario | seed | messages | faults | lost | duplicated | unexpected | recovered "
        "| converged | converge time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in rows.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(d["fault_kinds"].items()))
        conv = f"{d['converge_s']:.2f} s" if d["converge_s"] is not None else "-"
        out.append(
            f"| {name} | {d['seed']} | {d['messages']} | {d['faults']} ({kinds}) | {d['lost']} "
            f"| {d['duplicated']} | {d['unexpected']} | {d['recovered']} "
            f"| {'yes' if d['converged'] else 'no'} | {conv} |"
        )
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(sys.argv[1]))
