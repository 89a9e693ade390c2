"""Matrix events into syncengine's typed events: pure functions, no I/O.

Matrix numbers nothing: the durable events built here have ``pos=None`` and ``seq=None`` and
carry the Matrix ``event_id`` (the store assigns the order on apply). Message ids are event
ids; an operation's id comes back in the content key ``net.syncengine.op_id`` (every member
sees it) or in ``unsigned.transaction_id`` (only the sending device sees it).
"""

from __future__ import annotations

from typing import Any

import attrs

from syncengine.events import (
    ConversationUpdated,
    MessageDeleted,
    MessageReceived,
    MessageUpdated,
    ReadReceipt,
    ServerEvent,
    TypingStarted,
    TypingStopped,
    UserPresenceChanged,
)

__all__ = [
    "CONVERSATION_STATE",
    "OP_ID_KEY",
    "RoomInfo",
    "conversation_updated",
    "edit_of",
    "message_events",
    "op_id_of",
    "presence_event",
    "receipt_events",
    "redaction_target",
    "typing_events",
]

#: The state event (state key ``""``) that carries a room's syncengine conversation id.
CONVERSATION_STATE = "net.syncengine.conversation"
#: The same id in the room's ``creation_content``.
CREATION_KEY = "net.syncengine.conversation_id"
#: The content key that carries the outbox operation id of a message, edit or redaction.
OP_ID_KEY = "net.syncengine.op_id"

#: Matrix presence → v1 status, and back.
PRESENCE_IN = {"online": "online", "unavailable": "away", "offline": "offline"}
PRESENCE_OUT = {"online": "online", "away": "unavailable", "offline": "offline"}


@attrs.define
class RoomInfo:
    """What the transport keeps of one room's state: enough for a full ``ConversationUpdated``.

    Attributes:
        room_id: the Matrix room id.
        conversation_id: syncengine's id (the UUID carried in the room, else the room id).
        title: ``m.room.name``.
        members: user id → membership (``join``, ``invite``, ``leave``, ``ban``).
        creator: the sender of ``m.room.create``.
    """

    room_id: str
    conversation_id: str = ""
    title: str = ""
    members: dict[str, str] = attrs.field(factory=dict)
    creator: str = ""

    def apply_state(self, event: dict[str, Any]) -> bool:
        """Apply one state event; True when the title, members or id changed."""
        kind, content = event.get("type"), event.get("content") or {}
        key = event.get("state_key")
        if not isinstance(content, dict) or not isinstance(key, str):
            return False
        if kind == "m.room.name":
            title = content.get("name")
            changed = isinstance(title, str) and title != self.title
            self.title = title if isinstance(title, str) else self.title
            return changed
        if kind == "m.room.member":
            membership = str(content.get("membership", "leave"))
            changed = self.members.get(key) != membership
            self.members[key] = membership
            return changed
        if kind == "m.room.create":
            self.creator = str(event.get("sender") or content.get("creator") or "")
            cid = content.get(CREATION_KEY)
            if isinstance(cid, str) and not self.conversation_id:
                self.conversation_id = cid
            return True
        if kind == CONVERSATION_STATE and key == "":
            cid = content.get("id")
            if isinstance(cid, str) and not self.conversation_id:
                self.conversation_id = cid
                return True
        return False

    def current_members(self) -> tuple[str, ...]:
        """Joined and invited users, sorted (an invite becomes a join: invites are accepted)."""
        return tuple(sorted(u for u, m in self.members.items() if m in ("join", "invite")))


def conversation_updated(room: RoomInfo, event: dict[str, Any] | None) -> ConversationUpdated:
    """The room's full state now, as of ``event`` (the last state event applied)."""
    event = event or {}
    return ConversationUpdated(
        pos=None,
        seq=None,
        conversation_id=room.conversation_id,
        ts_ms=_int(event.get("origin_server_ts")),
        event_id=event.get("event_id") if isinstance(event.get("event_id"), str) else None,
        title=room.title,
        members=room.current_members(),
        actor=str(event.get("sender") or room.creator),
    )


def op_id_of(event: dict[str, Any]) -> str | None:
    """The outbox op id of an event: the content key, else the sender device's txnId."""
    content = event.get("content") or {}
    op = content.get(OP_ID_KEY) if isinstance(content, dict) else None
    if isinstance(op, str):
        return op
    txn = (event.get("unsigned") or {}).get("transaction_id")
    return txn if isinstance(txn, str) else None


def edit_of(event: dict[str, Any]) -> tuple[str, str] | None:
    """``(target event id, new body)`` when ``event`` is an ``m.replace`` edit."""
    content = event.get("content") or {}
    relates = content.get("m.relates_to") if isinstance(content, dict) else None
    if not isinstance(relates, dict) or relates.get("rel_type") != "m.replace":
        return None
    target, new = relates.get("event_id"), content.get("m.new_content") or {}
    body = new.get("body") if isinstance(new, dict) else None
    if not isinstance(target, str) or not isinstance(body, str):
        return None
    return target, body


def redaction_target(event: dict[str, Any]) -> str | None:
    """The event an ``m.room.redaction`` removes (``content.redacts`` since room v11)."""
    content = event.get("content") or {}
    target = content.get("redacts") if isinstance(content, dict) else None
    target = target or event.get("redacts")
    return target if isinstance(target, str) else None


def message_events(cid: str, event: dict[str, Any]) -> list[ServerEvent]:
    """An ``m.room.message`` that is not an edit: received (and deleted, when redacted)."""
    content = event.get("content") or {}
    body = content.get("body") if isinstance(content, dict) else None
    event_id, sender = str(event.get("event_id")), str(event.get("sender"))
    ts = _int(event.get("origin_server_ts"))
    out: list[ServerEvent] = [
        MessageReceived(
            pos=None,
            seq=None,
            conversation_id=cid,
            ts_ms=ts,
            event_id=event_id,
            message_id=event_id,
            op_id=op_id_of(event),
            sender=sender,
            body=body if isinstance(body, str) else "",
        )
    ]
    because = (event.get("unsigned") or {}).get("redacted_because")
    if isinstance(because, dict):
        out.append(
            MessageDeleted(
                pos=None,
                seq=None,
                conversation_id=cid,
                ts_ms=_int(because.get("origin_server_ts")) or ts,
                event_id=str(because.get("event_id")),
                message_id=event_id,
                deleted_by=str(because.get("sender")),
            )
        )
    return out


def updated_event(cid: str, event: dict[str, Any], target: str, body: str) -> MessageUpdated:
    """An edit of ``target`` (already checked to come from the original's sender)."""
    return MessageUpdated(
        pos=None,
        seq=None,
        conversation_id=cid,
        ts_ms=_int(event.get("origin_server_ts")),
        event_id=str(event.get("event_id")),
        message_id=target,
        body=body,
        editor=str(event.get("sender")),
    )


def deleted_event(cid: str, event: dict[str, Any], target: str) -> MessageDeleted:
    """A redaction of ``target``."""
    return MessageDeleted(
        pos=None,
        seq=None,
        conversation_id=cid,
        ts_ms=_int(event.get("origin_server_ts")),
        event_id=str(event.get("event_id")),
        message_id=target,
        deleted_by=str(event.get("sender")),
    )


def receipt_events(cid: str, content: dict[str, Any]) -> list[ReadReceipt]:
    """An ephemeral ``m.receipt`` (``{event_id: {"m.read": {user: {ts}}}}``) as receipts."""
    out = []
    for event_id, kinds in content.items():
        users = kinds.get("m.read") if isinstance(kinds, dict) else None
        if not isinstance(users, dict):
            continue
        for user, data in users.items():
            ts = data.get("ts") if isinstance(data, dict) else None
            out.append(
                ReadReceipt(
                    pos=None,
                    seq=None,
                    conversation_id=cid,
                    ts_ms=_int(ts),
                    user=user,
                    read_seq=None,
                    read_event_id=event_id,
                )
            )
    return out


def typing_events(
    cid: str, before: frozenset[str], now: frozenset[str], ts_ms: int, ttl_ms: int
) -> list[ServerEvent]:
    """Two successive ``m.typing`` snapshots of one room as started/stopped events."""
    out: list[ServerEvent] = [
        TypingStarted(conversation_id=cid, user=u, ttl_ms=ttl_ms, ts_ms=ts_ms)
        for u in sorted(now - before)
    ]
    out += [TypingStopped(conversation_id=cid, user=u, ts_ms=ts_ms) for u in sorted(before - now)]
    return out


def presence_event(event: dict[str, Any], now_ms: int) -> UserPresenceChanged | None:
    """An ``m.presence`` event. Matrix sends no timestamp: ``ts_ms`` is the time of receipt,
    ``last_seen_ms`` is derived from the relative ``last_active_ago``."""
    content = event.get("content") or {}
    user, status = event.get("sender"), content.get("presence")
    if not isinstance(user, str) or status not in PRESENCE_IN:
        return None
    ago = content.get("last_active_ago")
    return UserPresenceChanged(
        user=user,
        status=PRESENCE_IN[status],
        last_seen_ms=now_ms - ago if type(ago) is int else None,
        ts_ms=now_ms,
    )


def _int(value: Any) -> int:
    return value if type(value) is int else 0
