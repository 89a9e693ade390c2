"""Reading ``/sync`` responses: rooms, gap filling, typing diffs, auto-joined invites.

One :class:`SyncReader` is shared by the transport's ``pull`` and its live link, so both keep
the same room state, the same ``room_id ↔ conversation_id`` map and the same typing snapshots.
What it returns for one response is the list of typed events in delivery order: per room, the
events of a filled gap (oldest first), then the timeline's; a ``ConversationUpdated`` with the
room's full state before the first message that follows a state change.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import orjson

import syncengine.transport.matrix.convert as convert
from syncengine.errors import Rejected
from syncengine.events import Gap, ServerEvent
from syncengine.transport.matrix.convert import RoomInfo
from syncengine.transport.matrix.http import CLIENT, MatrixHttp, is_code, segment

__all__ = ["SyncReader"]

#: How many event ids → senders (for the foreign-edit check) and op ids → event ids are kept.
_REMEMBERED = 50_000


class _Lru(collections.OrderedDict[str, str]):
    def remember(self, key: str, value: str) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _REMEMBERED:
            self.popitem(last=False)


class SyncReader:
    """Turns ``/sync`` responses into syncengine events (see the module docstring).

    Args:
        http: the homeserver client.
        timeline_limit: the room timeline limit of the sync filter (gaps above it are filled).
        gap_cap: the most events one room's gap fill fetches; past it a :class:`Gap` is
            emitted and only the newest ``gap_cap`` events are delivered.
        typing_ttl_ms: the ``ttl_ms`` of the ``TypingStarted`` events built.
    """

    def __init__(
        self, http: MatrixHttp, *, timeline_limit: int, gap_cap: int, typing_ttl_ms: int
    ) -> None:
        self.http = http
        self.user_id = ""
        self.timeline_limit = timeline_limit
        self.gap_cap = gap_cap
        self.typing_ttl_ms = typing_ttl_ms
        self.rooms: dict[str, RoomInfo] = {}
        self.conv_rooms: dict[str, str] = {}
        self.senders = _Lru()
        self.op_events = _Lru()
        self._typing: dict[str, frozenset[str]] = {}

    # --- the map between rooms and conversations -----------------------------------------

    async def room(self, room_id: str) -> RoomInfo:
        """The room's state, read in full (``GET /rooms/{id}/state``) the first time."""
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        room = RoomInfo(room_id=room_id)
        try:
            path = f"{CLIENT}/rooms/{segment(room_id)}/state"
            state = await self.http.request("GET", path, array=True)
        except Rejected:
            state = {}  # an invite not joined yet, or a room left: the timeline tells
        for event in state.get("items", []):
            if isinstance(event, dict):
                room.apply_state(event)
        room.conversation_id = room.conversation_id or room_id
        self.rooms[room_id] = room
        self.conv_rooms[room.conversation_id] = room_id
        return room

    def filter_json(self) -> str:
        """The sync filter: a room timeline limit, and full member state (no lazy loading)."""
        return orjson.dumps(
            {"room": {"timeline": {"limit": self.timeline_limit}, "state": {}}}
        ).decode()

    # --- one /sync response ------------------------------------------------------------------

    async def read(self, resp: dict[str, Any], since: str | None) -> tuple[list[ServerEvent], bool]:
        """The events of one ``/sync`` response, and whether invites were joined (then the
        joined rooms arrive in the next response)."""
        out: list[ServerEvent] = []
        rooms = resp.get("rooms") or {}
        joined_any = False
        for room_id in rooms.get("invite") or {}:
            await self.http.request("POST", f"{CLIENT}/join/{segment(room_id)}", json={})
            joined_any = True
        for section in ("join", "leave"):
            for room_id, data in (rooms.get(section) or {}).items():
                if isinstance(data, dict):
                    await self._room(room_id, data, since, out)
        now_ms = int(time.time() * 1000)
        for event in (resp.get("presence") or {}).get("events") or []:
            changed = convert.presence_event(event, now_ms) if isinstance(event, dict) else None
            if changed is not None and changed.user != self.user_id:
                out.append(changed)
        return out, joined_any

    async def _room(
        self, room_id: str, data: dict[str, Any], since: str | None, out: list[ServerEvent]
    ) -> None:
        known = room_id in self.rooms
        room = await self.room(room_id)
        dirty = not known
        last_state: dict[str, Any] | None = None
        for event in (data.get("state") or {}).get("events") or []:
            if isinstance(event, dict) and room.apply_state(event):
                dirty, last_state = True, event
        timeline = data.get("timeline") or {}
        events = [e for e in timeline.get("events") or [] if isinstance(e, dict)]
        prev = timeline.get("prev_batch")
        if timeline.get("limited") and since and isinstance(prev, str):
            filled, gap = await self._fill(room, prev, since)
            if gap is not None:
                out.append(gap)
            seen = {e.get("event_id") for e in events}
            events = [e for e in filled if e.get("event_id") not in seen] + events
        for event in events:
            if isinstance(event.get("state_key"), str):
                if room.apply_state(event):
                    dirty, last_state = True, event
                continue
            if dirty:
                out.append(convert.conversation_updated(room, last_state))
                dirty = False
            out.extend(await self._timeline_event(room, event))
        if dirty:
            out.append(convert.conversation_updated(room, last_state))
        self._ephemeral(room, data, out)

    async def _fill(
        self, room: RoomInfo, prev_batch: str, since: str
    ) -> tuple[list[dict[str, Any]], Gap | None]:
        """The events between ``since`` and the timeline (``/messages`` backwards), oldest
        first; a :class:`Gap` when there were more than ``gap_cap``."""
        got: list[dict[str, Any]] = []
        token = prev_batch
        path = f"{CLIENT}/rooms/{segment(room.room_id)}/messages"
        while True:
            want = min(100, self.gap_cap - len(got)) or 1  # 1: is anything left past the cap?
            params = {"from": token, "to": since, "dir": "b", "limit": want}
            page = await self.http.request("GET", path, params=params)
            chunk = [e for e in page.get("chunk") or [] if isinstance(e, dict)]
            end = page.get("end")
            if len(got) >= self.gap_cap:
                gap = Gap(conversation_id=room.conversation_id, token=token, since=since)
                return got[::-1], gap if chunk else None
            got.extend(chunk)
            if not chunk or not isinstance(end, str):
                return got[::-1], None
            token = end

    async def _timeline_event(self, room: RoomInfo, event: dict[str, Any]) -> list[ServerEvent]:
        kind, cid = event.get("type"), room.conversation_id
        event_id, sender = event.get("event_id"), event.get("sender")
        if not isinstance(event_id, str) or not isinstance(sender, str):
            return []
        op_id = convert.op_id_of(event)
        if op_id is not None:
            self.op_events.remember(op_id, event_id)
        if kind == "m.room.redaction":
            target = convert.redaction_target(event)
            return [convert.deleted_event(cid, event, target)] if target else []
        if kind != "m.room.message":
            return []
        edit = convert.edit_of(event)
        if edit is None:
            self.senders.remember(event_id, sender)
            return list(convert.message_events(cid, event))
        target, body = edit
        if await self.sender_of(room.room_id, target) != sender:
            return []  # the server does not check who edits: a foreign edit is ignored
        return [convert.updated_event(cid, event, target, body)]

    async def sender_of(self, room_id: str, event_id: str) -> str | None:
        """Who sent ``event_id`` (remembered, else ``GET /rooms/{id}/event/{event_id}``)."""
        sender = self.senders.get(event_id)
        if sender is not None:
            return sender
        path = f"{CLIENT}/rooms/{segment(room_id)}/event/{segment(event_id)}"
        try:
            event = await self.http.request("GET", path)
        except Rejected as exc:
            if is_code(exc, "M_NOT_FOUND", "M_FORBIDDEN"):
                return None
            raise
        found = event.get("sender")
        if isinstance(found, str):
            self.senders.remember(event_id, found)
            return found
        return None

    def _ephemeral(self, room: RoomInfo, data: dict[str, Any], out: list[ServerEvent]) -> None:
        now_ms = int(time.time() * 1000)
        for event in (data.get("ephemeral") or {}).get("events") or []:
            if not isinstance(event, dict) or not isinstance(event.get("content"), dict):
                continue
            content = event["content"]
            if event.get("type") == "m.receipt":
                out.extend(convert.receipt_events(room.conversation_id, content))
            elif event.get("type") == "m.typing":
                users = content.get("user_ids")
                now = frozenset(u for u in users or [] if isinstance(u, str)) - {self.user_id}
                before = self._typing.get(room.room_id, frozenset())
                self._typing[room.room_id] = now
                out.extend(
                    convert.typing_events(
                        room.conversation_id, before, now, now_ms, self.typing_ttl_ms
                    )
                )
