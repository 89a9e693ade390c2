"""Pushing one claimed batch of the outbox: results sorted per operation, a refused request
bisected down to its culprit, and the Retry-After gate. Pure: ``now`` (wall-clock seconds,
as the outbox's ``next_attempt_at``) is passed in; the writes come out as data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from syncengine.core.backoff import Backoff
from syncengine.core.policy import Disposition, classify_status
from syncengine.errors import RateLimited, Rejected, TransportError
from syncengine.models import OutboxItem
from syncengine.wire import OpResult

__all__ = [
    "MarkFailed",
    "MarkRetry",
    "PushOutcome",
    "PushRound",
    "PushStep",
    "PushWindow",
    "op_to_wire",
]


def op_to_wire(item: OutboxItem) -> dict[str, Any]:
    """The JSON object pushed for one outbox item."""
    out: dict[str, Any] = {
        "op_id": item.op_id,
        "kind": item.kind.value,
        "conversation_id": item.conversation_id,
    }
    out.update(item.payload)
    return out


@attrs.define
class PushOutcome:
    """How one push round ended, per operation."""

    sent: list[OpResult] = attrs.Factory(list)
    failed: list[tuple[str, str, str]] = attrs.Factory(list)  # (op_id, code, reason)
    retry: list[str] = attrs.Factory(list)  # op ids to return to PENDING


def sort_results(items: Sequence[OutboxItem], results: Iterable[OpResult]) -> PushOutcome:
    """Sort per-operation results into sent, failed (permanent) and retry (transient).

    An item the server did not answer for is retried (never assumed sent).
    """
    by_id = {r.op_id: r for r in results}
    outcome = PushOutcome()
    for item in items:
        res = by_id.get(item.op_id)
        if res is None:
            outcome.retry.append(item.op_id)
        elif res.status in ("applied", "duplicate"):
            outcome.sent.append(res)
        else:
            status = res.status_code or 422
            if classify_status(status) is Disposition.RETRY:
                outcome.retry.append(item.op_id)
            else:
                outcome.failed.append(
                    (item.op_id, res.code or "rejected", res.reason or "rejected by server")
                )
    return outcome


@attrs.frozen
class MarkRetry:
    """Return these operations to PENDING, to be tried again at ``at`` (wall clock)."""

    op_ids: tuple[str, ...]
    reason: str
    at: float


@attrs.frozen
class MarkFailed:
    """Park this operation as FAILED: the server refused it for good."""

    item: OutboxItem
    code: str
    reason: str


@attrs.define
class PushStep:
    """What one answer (or failure) of a push request asks the driver to write.

    Attributes:
        sent: acknowledged results, to record in one transaction.
        failed: permanent rejections.
        retry: operations to return to PENDING.
        reraise: the failure ends the round and must reach the caller (after the writes).
    """

    sent: list[OpResult] = attrs.Factory(list)
    failed: list[MarkFailed] = attrs.Factory(list)
    retry: list[MarkRetry] = attrs.Factory(list)
    reraise: bool = False


@attrs.define
class PushWindow:
    """Operations per push request: the configured batch, narrowed while a batch the server
    refused as a whole is being bisected.

    The narrowing outlives the round: a round stopped mid-bisection (a 429, a dropped link)
    starts the next one from the half it had reached, not from the whole batch again. Else,
    under a sustained rate limit, every round would spend its one token on the refused whole
    batch and the queue would never get past it. It widens again once a round completes.
    """

    full: int
    narrowed: int | None = None

    @property
    def size(self) -> int:
        """Operations to claim for the next request."""
        return self.full if self.narrowed is None else min(self.full, self.narrowed)


class PushRound:
    """One claimed batch, pushed until every item is answered or the round stops.

    A request refused as a whole (one malformed operation) is split in two and each half
    sent again, down to the single culprit, which is parked as FAILED: one bad item must
    not stall the queue behind it. A 429 stops the round: its items wait for the server's
    Retry-After (or a backoff when it sent none), the rest are deferred.

    Args:
        items: the claimed batch.
        live: the session is LIVE (over the live link, or polling): a transient failure
            retries the items on a timer instead of ending the session (a live echo or the
            next poll may confirm them first).
        op_backoff: waits after a failed request.
        defer_backoff: waits for operations the server deferred or rate-limited.
        window: narrowed when a refused request is split, widened when the round completes.
    """

    def __init__(
        self,
        items: Sequence[OutboxItem],
        *,
        live: bool,
        op_backoff: Backoff,
        defer_backoff: Backoff,
        window: PushWindow | None = None,
    ) -> None:
        self._todo: list[Sequence[OutboxItem]] = [items]
        self._window = window
        self._live = live
        self._op_backoff = op_backoff
        self._defer_backoff = defer_backoff
        self.acked = 0
        self.stopped = False

    def next_batch(self) -> Sequence[OutboxItem] | None:
        """The items of the next request, or None when the round is over."""
        if self.stopped:
            return None
        if not self._todo:
            if self._window is not None:
                self._window.narrowed = None  # every item answered: the whole batch again
            return None
        return self._todo[0]

    def receive_results(self, results: Iterable[OpResult], now: float) -> PushStep:
        """The server answered the request for :meth:`next_batch`, per operation."""
        batch = self._todo.pop(0)
        self._op_backoff.reset()
        outcome = sort_results(batch, results)
        by_id = {i.op_id: i for i in batch}
        step = PushStep(sent=outcome.sent)
        step.failed = [MarkFailed(by_id[op], code, why) for op, code, why in outcome.failed]
        if outcome.retry:
            at = now + self._defer_backoff.next()
            step.retry.append(MarkRetry(tuple(outcome.retry), "deferred by the server", at))
        self.acked += len(outcome.sent)
        return step

    def receive_error(self, exc: BaseException, now: float) -> PushStep:
        """The request for :meth:`next_batch` failed with ``exc``."""
        batch = self._todo.pop(0)
        ids = tuple(i.op_id for i in batch)
        step = PushStep()
        if isinstance(exc, RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else self._defer_backoff.next()
            step.retry.append(MarkRetry(ids, str(exc), now + wait))
            return self._stop(step, now)
        if isinstance(exc, Rejected):
            if len(batch) == 1:
                step.failed.append(MarkFailed(batch[0], exc.code, exc.reason))
            else:
                mid = len(batch) // 2
                self._todo[:0] = [batch[:mid], batch[mid:]]
                if self._window is not None:
                    self._window.narrowed = mid
            return step
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TransportError) and self._live:
            step.retry.append(MarkRetry(ids, reason, now + self._op_backoff.next()))
            return self._stop(step, now)
        # Session-ending (link down, credentials refused, cancelled): back to PENDING at
        # once, replayed with the same op ids and deduplicated by the server (G2).
        step.retry.append(MarkRetry(ids, reason, now))
        step.reraise = True
        return self._stop(step, now)

    def _stop(self, step: PushStep, now: float) -> PushStep:
        rest = tuple(i.op_id for batch in self._todo for i in batch)
        if rest:
            step.retry.append(MarkRetry(rest, "deferred", now))
        self._todo.clear()
        self.stopped = True
        return step
