"""The sync state machine, sans I/O.

Rules of this file: every transition of the connection and of an outbox item is listed in
the two tables below, and nothing else moves a state. ``docs/architecture.md`` draws its
diagrams from these tables (``python -m syncengine.core.sync`` prints them as Mermaid).

:class:`SyncCore` is fed what the server said (``receive_*``) and drained of what to do next
(``*_request``, decisions). It keeps no sockets, no SQLite and no clock: the engine passes
``now`` in and performs the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from syncengine.core.policy import Disposition, classify_status
from syncengine.errors import UsageError
from syncengine.events import ConnectionStateChanged, DurableEvent, ServerEvent
from syncengine.models import ConnectionState as CS
from syncengine.models import OutboxItem, OutboxState
from syncengine.wire import EventPage, OpResult

__all__ = [
    "CONNECTION_TRANSITIONS",
    "OUTBOX_TRANSITIONS",
    "LiveDecision",
    "PushOutcome",
    "SyncCore",
    "mermaid",
    "op_to_wire",
]

#: Every allowed connection-state transition, with the reason it happens.
CONNECTION_TRANSITIONS: dict[tuple[CS, CS], str] = {
    (CS.OFFLINE, CS.CONNECTING): "start, or network back",
    (CS.CONNECTING, CS.SYNCING): "server reached",
    (CS.CONNECTING, CS.BACKOFF): "connect failed (transient)",
    (CS.CONNECTING, CS.FAILED): "credentials refused",
    (CS.CONNECTING, CS.OFFLINE): "closed",
    (CS.SYNCING, CS.LIVE): "push done and caught up",
    (CS.SYNCING, CS.BACKOFF): "link lost or server error",
    (CS.SYNCING, CS.FAILED): "credentials refused",
    (CS.SYNCING, CS.OFFLINE): "closed",
    (CS.LIVE, CS.SYNCING): "gap, outbox work or poll",
    (CS.LIVE, CS.BACKOFF): "link lost or heartbeat missed",
    (CS.LIVE, CS.FAILED): "credentials refused",
    (CS.LIVE, CS.OFFLINE): "closed",
    (CS.BACKOFF, CS.CONNECTING): "backoff elapsed",
    (CS.BACKOFF, CS.FAILED): "credentials refused",
    (CS.BACKOFF, CS.OFFLINE): "closed",
    (CS.FAILED, CS.CONNECTING): "logged in again",
    (CS.FAILED, CS.OFFLINE): "closed or logged out",
}

#: Every allowed outbox-item transition, with the reason it happens.
OUTBOX_TRANSITIONS: dict[tuple[OutboxState, OutboxState], str] = {
    (OutboxState.PENDING, OutboxState.SENDING): "claimed for a push",
    (OutboxState.PENDING, OutboxState.SENT): "server copy seen (echo) before the push",
    (OutboxState.SENDING, OutboxState.SENT): "acknowledged (applied or duplicate)",
    (OutboxState.SENDING, OutboxState.FAILED): "permanent rejection",
    (OutboxState.SENDING, OutboxState.PENDING): "transient failure, or crash recovery",
    (OutboxState.FAILED, OutboxState.PENDING): "retry requested",
}


def check_transition(old: CS, new: CS) -> str:
    """The reason for ``old -> new``; raises UsageError for a transition not in the table."""
    try:
        return CONNECTION_TRANSITIONS[(old, new)]
    except KeyError:
        raise UsageError(f"no connection transition {old.value} -> {new.value}") from None


def mermaid(table: dict[tuple[Any, Any], str]) -> str:
    """A Mermaid ``stateDiagram-v2`` of a transition table."""
    lines = ["stateDiagram-v2"]
    for (old, new), why in table.items():
        lines.append(f"    {old.name} --> {new.name}: {why}")
    return "\n".join(lines)


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


@attrs.frozen
class LiveDecision:
    """What to do with one live durable event.

    Attributes:
        cursor: advance the persisted cursor to this (None: leave it).
        gap: a seq jump was seen: pull from the cursor now.
    """

    cursor: int | None
    gap: bool


class SyncCore:
    """Sans-I/O sync decisions for one account.

    Args:
        cursor: the persisted stream position.
        known_seq: highest seq stored per conversation (for gap detection).
        push_batch: operations per push request.
        page_limit: events per pull request.
    """

    def __init__(
        self,
        *,
        cursor: int = 0,
        known_seq: dict[str, int] | None = None,
        push_batch: int = 500,
        page_limit: int = 500,
    ) -> None:
        self.state = CS.OFFLINE
        self.cursor = cursor
        self.known_seq: dict[str, int] = dict(known_seq or {})
        self.push_batch = push_batch
        self.page_limit = page_limit
        self.live_head: int | None = None
        self.caught_up = False
        self.gaps: set[str] = set()
        # The highest pos a live decision handed out, committed or not (see receive_live).
        self._live_decided = 0

    # --- connection state -------------------------------------------------------------------

    def transition(self, new: CS, reason: str = "") -> ConnectionStateChanged | None:
        """Move to ``new`` (validated against the table). None when already there."""
        old = self.state
        if old is new:
            return None
        why = check_transition(old, new)
        self.state = new
        return ConnectionStateChanged(old=old, new=new, reason=reason or why)

    def connection_lost(self) -> None:
        """The live link is gone: live events no longer prove contiguity."""
        self.live_head = None
        self.caught_up = False
        self._live_decided = 0

    # --- push -------------------------------------------------------------------------------

    def push_request(self, items: Sequence[OutboxItem]) -> dict[str, Any]:
        """Body of ``POST /v1/ops`` for the claimed items."""
        return {"ops": [op_to_wire(i) for i in items]}

    def receive_push_results(
        self, items: Sequence[OutboxItem], results: Iterable[OpResult]
    ) -> PushOutcome:
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

    # --- pull -------------------------------------------------------------------------------

    def pull_request(self) -> dict[str, int]:
        """Query of the next ``GET /v1/events``."""
        return {"since": self.cursor, "limit": self.page_limit}

    def receive_page(self, page: EventPage) -> bool:
        """Account for a pulled page (already applied with its cursor). True when caught up."""
        if page.next < self.cursor:
            # A server must never move the cursor back; keep ours (G3: never behind stored).
            return not page.has_more
        self.cursor = page.next
        self._note_seqs(page.events)
        if not page.has_more:
            self.caught_up = self.live_head is not None
            self.gaps.clear()
            return True
        return False

    def _note_seqs(self, events: Iterable[ServerEvent]) -> None:
        known = self.known_seq
        for ev in events:
            if isinstance(ev, DurableEvent) and known.get(ev.conversation_id, 0) < ev.seq:
                known[ev.conversation_id] = ev.seq

    # --- live -------------------------------------------------------------------------------

    def receive_ready(self, head: int) -> None:
        """The live channel is subscribed; it will deliver every event after ``head``."""
        self.live_head = head
        self.caught_up = False
        self._live_decided = 0

    def receive_live(self, event: DurableEvent) -> LiveDecision:
        """Decide about one live durable event (it is always applied: merging is idempotent).

        The cursor may follow live events only once a pull has caught up past the live head:
        from then on the server's in-order delivery proves nothing visible was skipped. A seq
        jump within a known conversation means something was missed: pull at once.

        The decision does not move :attr:`cursor` (the position pulls start from): the
        engine reports the commit with :meth:`committed`, so a pull running meanwhile can
        never persist a cursor past events whose commit then fails (G3).
        """
        cid = event.conversation_id
        last = self.known_seq.get(cid)
        gap = last is not None and event.seq > last + 1
        if last is None or event.seq > last:
            self.known_seq[cid] = event.seq
        if gap:
            self.gaps.add(cid)
            self.caught_up = False
            return LiveDecision(cursor=None, gap=True)
        if self.caught_up and event.pos > max(self.cursor, self._live_decided):
            self._live_decided = event.pos
            return LiveDecision(cursor=event.pos, gap=False)
        return LiveDecision(cursor=None, gap=False)

    def committed(self, cursor: int) -> None:
        """A live batch and its cursor were committed: pulls continue from there."""
        if cursor > self.cursor:
            self.cursor = cursor

    def resynced(self, head: int) -> None:
        """A resync replaced the store's view as of ``head``."""
        self.cursor = head
        self.caught_up = False
        self._live_decided = 0
        self.gaps.clear()


if __name__ == "__main__":  # pragma: no cover
    print("## Connection states\n\n```mermaid")
    print(mermaid(CONNECTION_TRANSITIONS))
    print("```\n\n## Outbox item states\n\n```mermaid")
    print(mermaid(OUTBOX_TRANSITIONS))
    print("```")
