"""Every durable change of the reference server, as a function over one write transaction.

The rules decide (:mod:`syncengine.server.rules`), the storage records
(:class:`~syncengine.server.storage.interface.WriteTx`); nothing here knows the database or
the live channel. :class:`~syncengine.server.service.ServerService` opens the transaction,
calls one of these, and publishes what was committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from syncengine.models import new_id
from syncengine.protocol import ops
from syncengine.protocol.bodies import ConversationSnapshot, OpResult
from syncengine.protocol.errors import Rejection
from syncengine.protocol.events import (
    ConversationUpdated,
    DurableEvent,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReactionChanged,
    ReadReceipt,
)
from syncengine.server import rules
from syncengine.server.storage.interface import ConversationRow, MessageRow, OpRecord, WriteTx

__all__ = [
    "announce",
    "apply_op",
    "change_member",
    "create_conversation",
    "rename",
    "set_member",
    "snapshot",
]


def snapshot(tx: WriteTx, conversation_id: str, viewer: str) -> ConversationSnapshot:
    """The conversation as ``viewer`` sees it after the change (it exists)."""
    snap = tx.snapshot(conversation_id, viewer)
    assert snap is not None, conversation_id
    return snap


def announce(
    tx: WriteTx, actor: str, conversation_id: str, extra: Iterable[str] = ()
) -> DurableEvent:
    """Append a ``conversation_updated`` with the conversation's state after a change.

    Args:
        tx: the open transaction.
        actor: who made the change.
        conversation_id: the conversation.
        extra: users who see this event besides the members (a removed user).
    """
    row = tx.conversation(conversation_id)
    assert row is not None, conversation_id
    members = tx.members(conversation_id)
    return tx.append(
        conversation_id,
        lambda p, s, t: ConversationUpdated(
            pos=p,
            conversation_id=conversation_id,
            seq=s,
            ts_ms=t,
            title=row.title,
            members=members,
            actor=actor,
        ),
        {*members, *extra},
    )


def create_conversation(
    tx: WriteTx,
    actor: str,
    conversation_id: str,
    title: str,
    members: tuple[str, ...],
    *,
    known_only: bool = False,
) -> tuple[bool, int, int]:
    """Create a conversation unless the same creation happened before.

    With ``known_only`` (the server's ``refuse_unknown_members``; off for seeding and
    storage tests), every member must have an account here.

    Returns:
        Whether it was created now, and the ``pos`` and ``ts_ms`` of its creation.

    Raises:
        Conflict: the id is taken by another creation.
        NotFound: the same creation, but the creator has left since.
        UnknownUser: a member has no account on this server.

        Forbidden: a member has blocked the creator.
    """
    origin = rules.creation_origin(actor, title, members)
    existing = tx.conversation(conversation_id)
    if existing is not None:
        rules.check_recreation(existing.origin, origin, tx.is_member(conversation_id, actor))
        return False, existing.created_pos, existing.created_ms
    if known_only:  # the creator is known: they are logged in
        rules.check_known_users(tx.unknown_users(m for m in members if m != actor))

    rules.check_may_add(actor, tx.blockers_of(actor, members))
    row = ConversationRow(
        id=conversation_id,
        title=title,
        created_by=actor,
        created_ms=tx.now_ms(),
        created_pos=tx.head + 1,
        last_seq=0,
        origin=origin,
    )
    tx.insert_conversation(row, members)
    event = announce(tx, actor, conversation_id)
    return True, event.pos, event.ts_ms


def rename(tx: WriteTx, actor: str, conversation_id: str, title: str) -> ConversationSnapshot:
    """Change a conversation's title (no event when it is unchanged).

    Raises:
        NotFound: for a non-member.
    """
    rules.require_member(tx.is_member(conversation_id, actor))
    row = tx.conversation(conversation_id)
    assert row is not None
    if row.title != title:
        tx.set_title(conversation_id, title)
        announce(tx, actor, conversation_id)
    return snapshot(tx, conversation_id, actor)


def set_member(
    tx: WriteTx,
    actor: str,
    conversation_id: str,
    user: str,
    *,
    present: bool,
    known_only: bool = False,
) -> ConversationSnapshot:
    """Add (``present=True``) or remove a member; no event when nothing changes.

    With ``known_only``, a user added must have an account here (removing never checks).

    The removed user is in the audience of the event that removes them, and in no later
    one. The member cap holds for every caller (a route, the simulator).

    Raises:
        NotFound: ``actor`` is not a member.
        Forbidden: the new member has blocked ``actor``.
        TooLarge: a new member past the cap.
        UnknownUser: the user added has no account on this server.
    """
    change_member(tx, actor, conversation_id, user, present=present, known_only=known_only)
    return snapshot(tx, conversation_id, actor)


def change_member(
    tx: WriteTx, actor: str, conversation_id: str, user: str, *, present: bool, known_only: bool
) -> DurableEvent | None:
    """:func:`set_member`'s change: the ``conversation_updated`` appended, or None."""
    rules.require_member(tx.is_member(conversation_id, actor))
    already = tx.is_member(conversation_id, user)
    if present and not already and known_only:
        rules.check_known_users(tx.unknown_users((user,)))

    if present and not already:
        rules.check_may_add(actor, tx.blockers_of(actor, (user,)))
    if present:
        rules.check_member_cap(len(tx.members(conversation_id)), already)
    if already == present:
        return None
    pos = tx.head + 1
    if present:
        tx.add_member(conversation_id, user, pos)
    else:
        tx.remove_member(conversation_id, user, pos)
    return announce(tx, actor, conversation_id, extra=(user,))


# --- operations ---------------------------------------------------------------------------


def apply_op(
    tx: WriteTx, user: str, device: str, raw: Mapping[str, Any], *, known_only: bool = False
) -> OpResult:
    """Apply one operation, or replay its recorded result.

    ``known_only``: members named must have an account here (see :func:`set_member`).

    Its idempotency record is written in the same transaction as its effect. A replay
    returns the original result as ``duplicate``; the same op id with another payload is
    rejected with ``op_id_conflict`` (and not recorded). A refused operation leaves no
    effect (a savepoint undoes it) but its rejection is recorded.
    """
    op_id = str(raw["op_id"])
    digest = ops.payload_hash(raw)
    record = tx.op_record(user, device, op_id)
    if record is not None:
        return rules.replayed(record.result, record.payload_hash, digest)
    try:
        with tx.savepoint():
            result = _effect(tx, user, device, ops.parse_op(raw, user), known_only)
    except Rejection as exc:
        result = rules.rejected(op_id, exc)
    kind = str(raw.get("kind"))
    tx.record_op(user, device, op_id, OpRecord(kind=kind, payload_hash=digest, result=result))
    return result


def _effect(tx: WriteTx, user: str, device: str, op: ops.Op, known_only: bool) -> OpResult:
    if isinstance(op, ops.CreateConversationOp):
        _created, pos, ts = create_conversation(
            tx, user, op.conversation_id, op.title, op.members, known_only=known_only
        )
        return rules.applied(op.op_id, op.conversation_id, None, 1, pos, ts)
    rules.require_member(tx.is_member(op.conversation_id, user))
    members = tx.members(op.conversation_id)
    if isinstance(op, ops.SendOp):
        return _send(tx, user, device, op, members)
    if isinstance(op, ops.MarkReadOp):
        return _mark_read(tx, user, op, members)
    if isinstance(op, ops.MemberOp):
        return _set_member(tx, user, op, known_only)
    if isinstance(op, ops.ReactOp):
        return _react(tx, user, op, members)
    message_id = _resolve_target(tx, user, device, op)
    if isinstance(op, ops.EditOp):
        return _edit(tx, user, op, message_id, members)
    return _delete(tx, user, op, message_id, members)


def _send(
    tx: WriteTx, user: str, device: str, op: ops.SendOp, members: tuple[str, ...]
) -> OpResult:
    cid = op.conversation_id
    reply_to = _reply_target(tx, user, device, op)
    message_id = new_id(tx.now_ms() / 1000)
    event = tx.append(
        cid,
        lambda p, s, t: MessageReceived(
            pos=p,
            conversation_id=cid,
            seq=s,
            ts_ms=t,
            message_id=message_id,
            op_id=op.op_id,
            sender=user,
            body=op.body,
            reply_to=reply_to,
        ),
        members,
    )
    tx.insert_message(
        MessageRow(
            message_id=message_id,
            conversation_id=cid,
            seq=event.seq,
            op_id=op.op_id,
            sender=user,
            device=device,
            body=op.body,
            ts_ms=event.ts_ms,
            edited_ms=None,
            deleted=False,
        )
    )
    return rules.applied(op.op_id, cid, message_id, event.seq, event.pos, event.ts_ms)


def _reply_target(tx: WriteTx, user: str, device: str, op: ops.SendOp) -> str | None:
    """The server id of the message a send replies to (None: not a reply)."""
    message_id = op.reply_to
    if op.reply_to_op_id is not None:
        record = tx.op_record(user, device, op.reply_to_op_id)
        message_id = rules.target_message_id(
            None if record is None else record.kind,
            None if record is None else record.result.message_id,
        )
    if message_id is None:
        return None
    found = tx.message(message_id)
    rules.check_reply_target(None if found is None else found.conversation_id, op.conversation_id)
    return message_id


def _edit(
    tx: WriteTx, user: str, op: ops.EditOp, message_id: str, members: tuple[str, ...]
) -> OpResult:
    cid = op.conversation_id
    event = tx.append(
        cid,
        lambda p, s, t: MessageUpdated(
            pos=p,
            conversation_id=cid,
            seq=s,
            ts_ms=t,
            message_id=message_id,
            body=op.body,
            editor=user,
        ),
        members,
    )
    tx.edit_message(message_id, op.body, event.ts_ms)
    return rules.applied(op.op_id, cid, message_id, event.seq, event.pos, event.ts_ms)


def _delete(
    tx: WriteTx, user: str, op: ops.DeleteOp, message_id: str, members: tuple[str, ...]
) -> OpResult:
    cid = op.conversation_id
    found = tx.message(message_id)
    if found is not None and found.deleted:  # deleting twice changes nothing
        return rules.applied(op.op_id, cid, message_id, None, None, tx.now_ms())
    event = tx.append(
        cid,
        lambda p, s, t: MessageDeleted(
            pos=p,
            conversation_id=cid,
            seq=s,
            ts_ms=t,
            message_id=message_id,
            deleted_by=user,
        ),
        members,
    )
    tx.delete_message(message_id)
    return rules.applied(op.op_id, cid, message_id, event.seq, event.pos, event.ts_ms)


def _resolve_target(tx: WriteTx, user: str, device: str, op: ops.EditOp | ops.DeleteOp) -> str:
    """The message an edit or delete names; checks that ``user`` may change it."""
    message_id = op.message_id
    if op.target_op_id is not None:
        record = tx.op_record(user, device, op.target_op_id)
        message_id = rules.target_message_id(
            None if record is None else record.kind,
            None if record is None else record.result.message_id,
        )
    assert message_id is not None
    found = tx.message(message_id)
    rules.check_target(
        None if found is None else (found.conversation_id, found.sender, found.deleted),
        op.conversation_id,
        user,
        editing=isinstance(op, ops.EditOp),
    )
    return message_id


def _set_member(tx: WriteTx, actor: str, op: ops.MemberOp, known_only: bool) -> OpResult:
    """An ``add_member`` or ``remove_member``: one ``conversation_updated`` when it changes
    something, none when the user already is (or is not) a member."""
    cid = op.conversation_id
    event = change_member(tx, actor, cid, op.user, present=op.present, known_only=known_only)
    if event is None:
        return rules.applied(op.op_id, cid, None, None, None, tx.now_ms())
    return rules.applied(op.op_id, cid, None, event.seq, event.pos, event.ts_ms)


def _react(tx: WriteTx, user: str, op: ops.ReactOp, members: tuple[str, ...]) -> OpResult:
    """One ``reaction_changed`` per operation: stores apply it as a set (a user's emoji on a
    message is there or not), so a repeated add or remove changes nothing in them."""
    cid = op.conversation_id
    found = tx.message(op.message_id)
    rules.check_reply_target(None if found is None else found.conversation_id, cid)
    event = tx.append(
        cid,
        lambda p, s, t: ReactionChanged(
            pos=p,
            conversation_id=cid,
            seq=s,
            ts_ms=t,
            message_id=op.message_id,
            user=user,
            emoji=op.emoji,
            present=not op.remove,
        ),
        members,
    )
    return rules.applied(op.op_id, cid, op.message_id, event.seq, event.pos, event.ts_ms)


def _mark_read(tx: WriteTx, user: str, op: ops.MarkReadOp, members: tuple[str, ...]) -> OpResult:
    cid = op.conversation_id
    row = tx.conversation(cid)
    assert row is not None
    if not rules.read_advances(op.seq, row.last_seq, tx.read_seq(cid, user)):
        return rules.applied(op.op_id, cid, None, None, None, tx.now_ms())
    tx.set_read_seq(cid, user, op.seq)
    event = tx.append(
        cid,
        lambda p, s, t: ReadReceipt(
            pos=p, conversation_id=cid, seq=s, ts_ms=t, user=user, read_seq=op.seq
        ),
        members,
    )
    return rules.applied(op.op_id, cid, None, event.seq, event.pos, event.ts_ms)
