"""The Matrix transport: a Matrix homeserver (Synapse) behind syncengine's transport seam.

See ``docs/matrix.md`` for the mapping. In short: rooms are conversations; the outbox op id
is the txnId; cursors are opaque ``/sync`` tokens; ``pull`` is one ``/sync`` with gaps filled
inside the transport; the live link long-polls ``/sync`` from the engine's cursor.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from typing import Any

import attrs
import httpx

import syncengine.transport.matrix.convert as convert
from syncengine.errors import AuthFailed, Rejected, TransportError, WireError
from syncengine.transport.matrix.http import CLIENT, MatrixHttp, segment
from syncengine.transport.matrix.live import MatrixSyncLink
from syncengine.transport.matrix.push import OpPusher, Unresolved
from syncengine.transport.matrix.reader import SyncReader
from syncengine.transport.snapshots import ConversationList, ConversationSnapshot, PresenceSnapshot
from syncengine.wire import EventPage, HistoryMessage, HistoryPageWire, OpResult

__all__ = ["MatrixCapabilities", "MatrixTransport"]


@attrs.frozen
class MatrixCapabilities:
    """What the engine may assume of this transport (the engine's ``Capabilities`` flags).

    Cursors are opaque and unordered, nothing is numbered by the server, gaps come as
    :class:`~syncengine.events.Gap`, operations go one by one, and the live link streams from
    the cursor it is given.
    """

    ordered_cursor: bool = False
    dense_seq: bool = False
    server_seq: bool = False
    batch_push: bool = False
    live_from_cursor: bool = True


class MatrixTransport:
    """syncengine's transport for the Matrix client-server API.

    Args:
        base_url: the homeserver (``https://host[:port]``; plain http only for loopback).
        ssl_context: the TLS context (verification always on).
        allow_insecure: allow plain http to a host that is not loopback.
        timeout_s: per-request timeout.
        timeline_limit: the sync filter's room timeline limit.
        gap_cap: the most events one room's gap fill fetches before it emits a ``Gap``.
        live_timeout_ms: how long one live ``/sync`` long poll may wait.
        typing_timeout_ms: how long the server shows this user typing.
        http_transport: an httpx transport to send through instead of the network (tests).
    """

    capabilities = MatrixCapabilities()

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allow_insecure: bool = False,
        timeout_s: float = 10.0,
        timeline_limit: int = 100,
        gap_cap: int = 1000,
        live_timeout_ms: int = 30_000,
        typing_timeout_ms: int = 30_000,
        http_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = MatrixHttp(
            base_url,
            ssl_context=ssl_context,
            allow_insecure=allow_insecure,
            timeout_s=timeout_s,
            http_transport=http_transport,
        )
        self.base_url = self.http.base_url
        self.device_id: str | None = None
        self.live_timeout_ms = live_timeout_ms
        self.typing_timeout_ms = typing_timeout_ms
        self.reader = SyncReader(
            self.http,
            timeline_limit=timeline_limit,
            gap_cap=gap_cap,
            typing_ttl_ms=typing_timeout_ms,
        )
        self.pusher = OpPusher(self.http, self.reader, self.server_name)
        self._presence = "online"

    @property
    def user_id(self) -> str:
        """This user's Matrix id (``@name:server``), known after login or ``whoami``."""
        return self.reader.user_id

    def server_name(self) -> str:
        """The homeserver's name (the part of the user id after the first ``:``)."""
        return self.user_id.partition(":")[2]

    async def login(self, user: str, password: str, device: str) -> str:
        """``m.login.password`` with ``device`` as the persisted ``device_id`` (txnIds are
        remembered per device: the same device id replays to the same events).

        Raises:
            AuthFailed: a wrong password or an unknown user (Synapse's ``403 M_FORBIDDEN``).
        """
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "device_id": device,
            "initial_device_display_name": f"syncengine {device}",
        }
        answer = await self.http.request("POST", f"{CLIENT}/login", json=body, login=True)
        token, user_id = answer.get("access_token"), answer.get("user_id")
        if not isinstance(token, str) or not isinstance(user_id, str):
            raise WireError("login response without access_token and user_id", field="login")
        self.reader.user_id = user_id
        self.device_id = str(answer.get("device_id") or device)
        return token

    def set_token(self, token: str | None) -> None:
        """Use ``token`` for every following request (None: anonymous)."""
        self.http.token = token

    async def whoami(self) -> str:
        """This token's user id (``GET /account/whoami``), remembered."""
        if not self.reader.user_id:
            if self.http.token is None:
                raise AuthFailed("not logged in")
            answer = await self.http.request("GET", f"{CLIENT}/account/whoami")
            self.reader.user_id = str(answer.get("user_id"))
            self.device_id = self.device_id or answer.get("device_id")
        return self.reader.user_id

    async def push(self, ops: Sequence[dict[str, Any]]) -> list[OpResult]:
        """One request per operation, in order. A permanent refusal is that operation's
        ``rejected`` result; the first transient failure stops the batch (the rest get no
        result and are retried, in order). An operation whose target is not resolvable yet
        gets no result either.

        Raises:
            AuthFailed: the token was refused.
            TransportError: the first operation failed transiently (nothing was sent).
        """
        await self.whoami()
        results: list[OpResult] = []
        blocked: set[str] = set()  # conversations with an unsent op: keep their order
        for op in ops:
            if op.get("conversation_id") in blocked:
                continue
            try:
                results.append(await self.pusher.push(dict(op)))
            except Unresolved:
                blocked.add(str(op.get("conversation_id")))
            except TransportError:
                if not results:
                    raise
                break
        return results

    async def _sync(self, since: Any, wait_ms: int) -> tuple[dict[str, Any], str | None]:
        await self.whoami()
        token = since if isinstance(since, str) and since else None
        params: dict[str, Any] = {
            "filter": self.reader.filter_json(),
            "timeout": wait_ms,
            "set_presence": convert.PRESENCE_OUT.get(self._presence, "online"),
        }
        if token is not None:
            params["since"] = token
        resp = await self.http.request(
            "GET", f"{CLIENT}/sync", params=params, wait_s=wait_ms / 1000
        )
        return resp, token

    async def sync_once(self, since: Any, wait_ms: int = 0) -> tuple[list[Any], str, bool]:
        """One ``/sync`` read: its events, its ``next_batch``, whether invites were joined."""
        resp, token = await self._sync(since, wait_ms)
        events, joined = await self.reader.read(resp, token)
        next_batch = resp.get("next_batch")
        if not isinstance(next_batch, str):
            raise WireError("sync response without next_batch", field="next_batch")
        return events, next_batch, joined

    async def pull(self, since: int | str, limit: int) -> EventPage:
        """One ``/sync`` from ``since`` (0 or "" for the first), gaps filled. ``has_more`` is
        true when invites were joined (their rooms come with the next pull). ``limit`` is not
        used: the filter's timeline limit and the gap fill bound the page."""
        events, next_batch, joined = await self.sync_once(since)
        return EventPage(events=tuple(events), next=next_batch, has_more=joined)

    async def history(
        self, conversation_id: str, before: int | str | None, limit: int
    ) -> HistoryPageWire:
        """``/messages`` backwards from the token ``before`` (None: the newest), oldest first;
        edits are applied from the server's bundled ``m.replace``, foreign ones ignored."""
        room_id = await self.pusher.room_id(conversation_id)
        params: dict[str, Any] = {"dir": "b", "limit": limit}
        if isinstance(before, str) and before:
            params["from"] = before
        page = await self.http.request(
            "GET", f"{CLIENT}/rooms/{segment(room_id)}/messages", params=params
        )
        messages = []
        for event in page.get("chunk") or []:
            message = _history_message(conversation_id, event)
            if message is not None:
                messages.append(message)
        end = page.get("end")
        return HistoryPageWire(
            messages=tuple(messages[::-1]),
            end_of_history=not isinstance(end, str),
            prev=end if isinstance(end, str) else None,
        )

    async def conversation_list(self) -> ConversationList:
        """Every joined room now (a ``/sync`` without ``since``), and that sync's token."""
        resp, _ = await self._sync(None, 0)
        convs = []
        for room_id in (resp.get("rooms") or {}).get("join") or {}:
            self.reader.rooms.pop(room_id, None)  # read its state afresh
            room = await self.reader.room(room_id)
            convs.append(
                ConversationSnapshot(
                    id=room.conversation_id,
                    title=room.title,
                    members=room.current_members(),
                    created_by=room.creator or None,
                )
            )
        return ConversationList(conversations=tuple(convs), head=str(resp.get("next_batch")))

    async def conversations(self) -> tuple[list[dict[str, Any]], int | str]:
        """:meth:`conversation_list` in the dict shape the engine reads."""
        snapshot = await self.conversation_list()
        return [c.as_dict() for c in snapshot.conversations], snapshot.head

    async def presence_list(self) -> tuple[PresenceSnapshot, ...]:
        """``GET /presence/{user}/status`` of everyone who shares a room with this user."""
        await self.whoami()
        users = sorted({u for r in self.reader.rooms.values() for u in r.current_members()})
        now_ms = int(time.time() * 1000)
        out = []
        for user in users:
            try:
                answer = await self.http.request("GET", f"{CLIENT}/presence/{segment(user)}/status")
            except Rejected:
                # 403 for a user who shares no room with us yet (only invited): no snapshot;
                # their changes arrive through /sync once they join.
                continue
            status = convert.PRESENCE_IN.get(str(answer.get("presence")))
            ago = answer.get("last_active_ago")
            if status is not None:
                last = now_ms - ago if type(ago) is int else None
                out.append(
                    PresenceSnapshot(user=user, status=status, ts_ms=now_ms, last_seen_ms=last)
                )
        return tuple(out)

    async def presence(self) -> list[dict[str, Any]]:
        """:meth:`presence_list` in the dict shape the engine reads."""
        return [p.as_dict() for p in await self.presence_list()]

    async def send_typing(self, conversation_id: str, typing: bool) -> None:
        """``PUT /rooms/{id}/typing/{user}``."""
        user = await self.whoami()
        room_id = await self.pusher.room_id(conversation_id)
        body: dict[str, Any] = {"typing": typing}
        if typing:
            body["timeout"] = self.typing_timeout_ms
        path = f"{CLIENT}/rooms/{segment(room_id)}/typing/{segment(user)}"
        await self.http.request("PUT", path, json=body)

    async def send_presence(self, status: str) -> None:
        """``PUT /presence/{user}/status`` (``away`` is Matrix's ``unavailable``); later
        syncs keep it (their ``set_presence`` follows it)."""
        user = await self.whoami()
        self._presence = status
        body = {"presence": convert.PRESENCE_OUT.get(status, "online")}
        await self.http.request("PUT", f"{CLIENT}/presence/{segment(user)}/status", json=body)

    async def connect_live(self, since: int | str | None = None) -> MatrixSyncLink:
        """The live link: a task that long-polls ``/sync`` from ``since``."""
        await self.whoami()
        return MatrixSyncLink.start(self, since)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()


def _history_message(cid: str, event: Any) -> HistoryMessage | None:
    if not isinstance(event, dict) or event.get("type") != "m.room.message":
        return None
    if convert.edit_of(event) is not None:
        return None  # an edit: applied to its original through the bundled relation
    unsigned = event.get("unsigned") or {}
    content = event.get("content") or {}
    body: str = content["body"] if isinstance(content.get("body"), str) else ""
    edited_ms = None
    replace = (unsigned.get("m.relations") or {}).get("m.replace")
    if isinstance(replace, dict) and replace.get("sender") == event.get("sender"):
        new = (replace.get("content") or {}).get("m.new_content") or {}
        if isinstance(new.get("body"), str):
            body, edited_ms = new["body"], replace.get("origin_server_ts")
    ts = event.get("origin_server_ts")
    return HistoryMessage(
        message_id=str(event.get("event_id")),
        conversation_id=cid,
        seq=None,
        op_id=convert.op_id_of(event),
        sender=str(event.get("sender")),
        body="" if "redacted_because" in unsigned else body,
        ts_ms=ts if type(ts) is int else 0,
        edited_ms=edited_ms if type(edited_ms) is int else None,
        deleted="redacted_because" in unsigned,
    )
