"""Whether a queued operation may be cancelled, sans I/O.

A cancel is a deletion, not a move: the outbox row and its local effect go away, so
``OUTBOX_TRANSITIONS`` (``core/sync.py``) gains no state and no move. It is only safe for an
operation the server has certainly not applied:

- PENDING with no attempt: never claimed for a push, so it never left this device;
- FAILED: the server refused it for good, and a refusal applies nothing.

Anything else may have been applied: SENDING is in flight, SENT was acknowledged, and PENDING
after an attempt may have been applied by a push whose answer was lost (a retry would then be
answered ``duplicate``). Those are refused with a reason the user can read.

Only operations whose local effect can be undone exactly are cancelled: a send (its local
echo is removed) and a conversation creation (the pending conversation is removed). An edit,
a deletion or a read receipt overwrote the local copy; queue another edit instead.
"""

from __future__ import annotations

from syncengine.models import OpKind, OutboxState

__all__ = ["CANCELLABLE_KINDS", "cancel_refusal"]

#: The kinds whose local effect a cancel removes exactly.
CANCELLABLE_KINDS = frozenset({OpKind.SEND, OpKind.CREATE_CONVERSATION})


def cancel_refusal(kind: OpKind, state: OutboxState, attempts: int, dependents: int) -> str | None:
    """Why an operation cannot be cancelled, or None when it can.

    Args:
        kind: the operation's kind.
        state: its outbox state.
        attempts: how many times it was claimed for a push.
        dependents: other unsent operations that need it (an edit of a queued send, a send
            into a queued conversation).

    Returns:
        One human-readable reason, or None.
    """
    if state is OutboxState.SENT:
        return "it was already sent and acknowledged by the server"
    if state is OutboxState.SENDING:
        return "it is being sent now"
    if state is OutboxState.PENDING and attempts > 0:
        return "it was already sent once (the server may have applied it); it will be retried"
    if kind not in CANCELLABLE_KINDS:
        return f"a {kind.value} changed the local copy in place; queue another operation instead"
    if dependents:
        plural = "s" if dependents > 1 else ""
        return f"{dependents} other queued operation{plural} depend on it: cancel them first"
    return None
