"""Outbox operations as Matrix requests: one request per operation, the op id as txnId.

Synapse remembers a txnId per (room, device) for 24 hours, across restarts, whatever the
endpoint: a replay of a send or a redaction returns the original event. ``createRoom`` has no
txnId; it is made idempotent with the room alias ``#se-<conversation id>``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import syncengine.transport.matrix.convert as convert
from syncengine.errors import Rejected
from syncengine.transport.matrix.http import CLIENT, MatrixHttp, is_code, segment
from syncengine.transport.matrix.reader import SyncReader
from syncengine.wire import OpResult

__all__ = ["OpPusher", "Unresolved"]

#: The power levels of a new room: as Synapse's ``private_chat`` defaults, except that any
#: member may rename it (v1's rule).
_EVENTS_PL = {
    "m.room.name": 0,
    "m.room.power_levels": 100,
    "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50,
    "m.room.avatar": 50,
    "m.room.tombstone": 100,
    "m.room.server_acl": 100,
    "m.room.encryption": 100,
    convert.CONVERSATION_STATE: 100,
}


class Unresolved(Exception):
    """The operation names a message (by op id) or a read position (by seq) that this
    transport cannot map to a Matrix event id yet: it is not sent, and retried later."""


class OpPusher:
    """Sends one outbox operation (a dict as ``op_to_wire`` builds it) and builds its result."""

    def __init__(self, http: MatrixHttp, reader: SyncReader, server_name: Callable[[], str]):
        self.http = http
        self.reader = reader
        self.server_name = server_name
        self._kinds: dict[str, Callable[[dict[str, Any]], Awaitable[OpResult]]] = {
            "send": self._send,
            "edit": self._edit,
            "delete": self._delete,
            "mark_read": self._mark_read,
            "create_conversation": self._create,
        }

    async def push(self, op: dict[str, Any]) -> OpResult:
        """Send ``op``; a permanent refusal is a ``rejected`` result.

        Raises:
            Unresolved: see :class:`Unresolved`.
            TransportError / AuthFailed: the request failed as a whole (retry, or log in).
        """
        handler = self._kinds.get(str(op.get("kind")))
        if handler is None:
            return _rejected(
                op, Rejected("invalid", f"unknown kind {op.get('kind')!r}", status=422)
            )
        try:
            return await handler(op)
        except Rejected as exc:
            return _rejected(op, exc)

    async def room_id(self, conversation_id: str) -> str:
        """The room of a conversation: known, else the alias ``#se-<id>``, else the id itself
        (a room created outside syncengine has its room id as conversation id)."""
        room_id = self.reader.conv_rooms.get(conversation_id)
        if room_id is not None:
            return room_id
        if conversation_id.startswith("!"):
            return conversation_id
        alias = segment(f"#se-{conversation_id}:{self.server_name()}")
        try:
            found = await self.http.request("GET", f"{CLIENT}/directory/room/{alias}")
        except Rejected as exc:
            raise Rejected(
                "not_found", f"no room for conversation {conversation_id}", status=404
            ) from exc
        room_id = str(found.get("room_id"))
        room = await self.reader.room(room_id)
        self.reader.conv_rooms[conversation_id] = room_id
        room.conversation_id = conversation_id
        return room_id

    async def _put_event(self, op: dict[str, Any], content: dict[str, Any]) -> OpResult:
        room_id = await self.room_id(op["conversation_id"])
        path = f"{CLIENT}/rooms/{segment(room_id)}/send/m.room.message/{segment(op['op_id'])}"
        answer = await self.http.request("PUT", path, json=content)
        return self._applied(op, answer.get("event_id"))

    def _applied(self, op: dict[str, Any], event_id: Any) -> OpResult:
        if isinstance(event_id, str):
            self.reader.op_events.remember(op["op_id"], event_id)
            self.reader.senders.remember(event_id, self.reader.user_id)
        return OpResult(
            op_id=op["op_id"],
            status="applied",
            conversation_id=op["conversation_id"],
            message_id=event_id if isinstance(event_id, str) else None,
        )

    async def _send(self, op: dict[str, Any]) -> OpResult:
        content = {"msgtype": "m.text", "body": op.get("body", ""), convert.OP_ID_KEY: op["op_id"]}
        return await self._put_event(op, content)

    def _target(self, op: dict[str, Any]) -> str:
        message_id = op.get("message_id")
        if isinstance(message_id, str):
            return message_id
        event_id = self.reader.op_events.get(str(op.get("target_op_id")))
        if event_id is None:
            raise Unresolved(op["op_id"])
        return event_id

    async def _edit(self, op: dict[str, Any]) -> OpResult:
        target, body = self._target(op), op.get("body", "")
        content = {
            "msgtype": "m.text",
            "body": f"* {body}",
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": target},
            convert.OP_ID_KEY: op["op_id"],
        }
        return await self._put_event(op, content)

    async def _delete(self, op: dict[str, Any]) -> OpResult:
        target = self._target(op)
        room_id = await self.room_id(op["conversation_id"])
        path = f"{CLIENT}/rooms/{segment(room_id)}/redact/{segment(target)}/{segment(op['op_id'])}"
        answer = await self.http.request("PUT", path, json={})
        return self._applied(op, answer.get("event_id"))

    async def _mark_read(self, op: dict[str, Any]) -> OpResult:
        # Receipts need no txnId: they are idempotent and never move back.
        event_id = op.get("event_id") or op.get("message_id")
        if not isinstance(event_id, str):
            raise Unresolved(op["op_id"])
        room_id = await self.room_id(op["conversation_id"])
        path = f"{CLIENT}/rooms/{segment(room_id)}/receipt/m.read/{segment(event_id)}"
        await self.http.request("POST", path, json={})
        return OpResult(op_id=op["op_id"], status="applied", conversation_id=op["conversation_id"])

    def user_id_of(self, name: str) -> str:
        """A member as a Matrix user id: a localpart gets ``@`` and ``:server``."""
        return name if name.startswith("@") else f"@{name.lower()}:{self.server_name()}"

    async def _create(self, op: dict[str, Any]) -> OpResult:
        cid = op["conversation_id"]
        invite = sorted(
            {self.user_id_of(m) for m in op.get("members") or []} - {self.reader.user_id}
        )
        body = {
            "preset": "private_chat",
            "name": op.get("title", ""),
            "invite": invite,
            "room_alias_name": f"se-{cid}",
            "creation_content": {convert.CREATION_KEY: cid},
            "initial_state": [
                {"type": convert.CONVERSATION_STATE, "state_key": "", "content": {"id": cid}}
            ],
            "power_level_content_override": {"events": _EVENTS_PL},
        }
        try:
            answer = await self.http.request("POST", f"{CLIENT}/createRoom", json=body)
            room_id = str(answer.get("room_id"))
        except Rejected as exc:
            if not is_code(exc, "M_ROOM_IN_USE"):
                raise
            room_id = await self._existing_room(cid)
        self.reader.conv_rooms[cid] = room_id
        return OpResult(op_id=op["op_id"], status="applied", conversation_id=cid)

    async def _existing_room(self, cid: str) -> str:
        """A replayed create: the alias names our room (or another creator's: a conflict)."""
        alias = segment(f"#se-{cid}:{self.server_name()}")
        found = await self.http.request("GET", f"{CLIENT}/directory/room/{alias}")
        room_id = str(found.get("room_id"))
        self.reader.rooms.pop(room_id, None)
        room = await self.reader.room(room_id)
        if room.creator != self.reader.user_id:
            raise Rejected(
                "conflict", f"conversation {cid} was created by someone else", status=409
            )
        return room_id


def _rejected(op: dict[str, Any], exc: Rejected) -> OpResult:
    return OpResult(
        op_id=str(op.get("op_id")),
        status="rejected",
        code=exc.code,
        reason=exc.reason,
        status_code=exc.status or 422,
    )
