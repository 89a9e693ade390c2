"""Simulated traffic: bot users that talk, type and come and go (``serve --simulate N``).

Bots ``bot1`` … ``botN`` share a *lobby* conversation (and, from two bots on, a *bots*
room). Every user who logs in is added to the lobby by ``bot1``, so a fresh client sees
traffic at once. Bots act through the same storage and fan-out as real clients, so their
events have ``pos`` and ``seq`` like any other and reach the live channel in order.

The fault mode (5xx, lost acknowledgements, delays, dropped live connections) is configured
by :class:`~syncengine.server.config.FaultConfig` and applied by
:mod:`syncengine.server.faults` and :mod:`syncengine.server.live`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from syncengine.models import new_id
from syncengine.protocol.bodies import ConversationSnapshot, OpResult
from syncengine.protocol.errors import Rejection
from syncengine.server import rules
from syncengine.server.config import ServerConfig
from syncengine.server.live import Hub
from syncengine.server.storage.interface import ServerStorage

__all__ = ["BOT_DEVICE", "SimulatedServer", "Simulator", "bot_names", "lobby_id"]

log = logging.getLogger("syncengine.server.simulate")

BOT_DEVICE = "sim"
_NAMESPACE = uuid.UUID("6f0b1d5e-5a61-4f0e-9d59-3c1f3f9d4a10")
_PHRASES = (
    "hello there",
    "anyone around?",
    "the build is green again",
    "lunch in ten minutes",
    "I pushed the fix",
    "can you review my change?",
    "the sync looks healthy",
    "brb",
    "sounds good to me",
    "what about the retention setting?",
    "offline for a bit, queueing messages",
    "back online",
)


def bot_names(count: int) -> list[str]:
    """``["bot1", …, "botN"]``."""
    return [f"bot{i}" for i in range(1, count + 1)]


def lobby_id(count: int) -> str:
    """The id of the lobby shared by ``count`` bots (stable across restarts)."""
    return str(uuid.uuid5(_NAMESPACE, f"lobby-{count}"))


def _room_id(count: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"bots-{count}"))


class SimulatedServer(Protocol):
    """What the bots need of the server: the service's own methods, so its rules hold."""

    config: ServerConfig
    storage: ServerStorage
    hub: Hub
    on_login: list[Callable[[str], None]]

    def create_conversation(
        self, actor: str, conversation_id: str, title: str, members: tuple[str, ...]
    ) -> tuple[ConversationSnapshot, bool]:
        """Create a conversation and publish its event."""
        ...

    def set_member(
        self, actor: str, conversation_id: str, user: str, *, present: bool
    ) -> ConversationSnapshot:
        """Add or remove a member and publish the event."""
        ...

    def push(self, user: str, device: str, raw_ops: Sequence[Mapping[str, Any]]) -> list[OpResult]:
        """Apply operations and publish their events."""
        ...


class Simulator:
    """Bots acting on a running server.

    Args:
        core: the server (its service) the bots act through.
        count: the number of bots.
        rate: actions per second of each bot (on average; the delays are exponential).
        seed: seed of the bots' choices, for a reproducible run.
    """

    def __init__(
        self, core: SimulatedServer, count: int, rate: float, seed: int | None = None
    ) -> None:
        self.core = core
        self.bots = bot_names(count)
        self.rate = rate
        self.rng = random.Random(seed)
        self.lobby = lobby_id(count)
        self.rooms = [self.lobby] + ([_room_id(count)] if count >= 2 else [])
        self.actions = 0
        self._sent: dict[str, list[str]] = {}  # bot -> op ids of its sends
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Create the bots and their conversations, and start acting."""
        storage = self.core.storage
        params = rules.scrypt_params(self.core.config.scrypt_n)
        for bot in self.bots:
            # A random hash that no password matches: bots cannot be logged into.
            storage.create_user(bot, os.urandom(16), os.urandom(32), params)
        half = self.bots[: max(2, len(self.bots) // 2)]
        titles = {self.lobby: "Lobby", **{room: "Bots" for room in self.rooms[1:]}}
        for room in self.rooms:
            members = tuple(self.bots if room == self.lobby else half)
            self.core.create_conversation(self.bots[0], room, titles[room], members)
        for bot in self.bots:
            self.core.hub.set_status(bot, "online")
        self.core.on_login.append(self.welcome)
        self._task = asyncio.create_task(self._run(), name="syncengine-simulator")
        log.info("simulating %d bots in %d conversations", len(self.bots), len(self.rooms))

    async def stop(self) -> None:
        """Stop acting."""
        if self.welcome in self.core.on_login:
            self.core.on_login.remove(self.welcome)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def welcome(self, user: str) -> None:
        """Add a user who just logged in to the lobby (bots stay where they are)."""
        if user in self.bots:
            return
        try:
            self.core.set_member(self.bots[0], self.lobby, user, present=True)
        except Rejection:  # bot1 was removed from the lobby, or the lobby is full
            return

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(self.rate * len(self.bots)))
            try:
                self.step()
            except Rejection as exc:  # e.g. a bot was removed from a room by a user
                log.debug("bot action refused: %s", exc)

    def step(self) -> None:
        """One bot does one thing: send, type, edit, delete or change presence."""
        bot = self.rng.choice(self.bots)
        room = self.rng.choice(
            [r for r in self.rooms if self.core.storage.is_member(r, bot)] or [self.lobby]
        )
        action = self.rng.choices(
            ("send", "type", "edit", "delete", "presence"), weights=(55, 25, 6, 3, 11)
        )[0]
        self.actions += 1
        sent = self._sent.setdefault(bot, [])
        if action == "type":
            self.core.hub.set_typing(room, bot, True)
        elif action == "presence":
            self.core.hub.set_status(bot, self.rng.choice(("online", "away")))
        elif action in ("edit", "delete") and sent:
            target = sent.pop() if action == "delete" else sent[-1]
            op: dict[str, object] = {"op_id": new_id(), "kind": action, "target_op_id": target}
            if action == "edit":
                op["body"] = self.rng.choice(_PHRASES) + " (edited)"
            self._push(bot, self._conversation_of(bot, target) or room, op)
        else:
            op_id = new_id()
            self._push(
                bot, room, {"op_id": op_id, "kind": "send", "body": self.rng.choice(_PHRASES)}
            )
            sent.append(op_id)
            del sent[:-20]
            self.core.hub.set_typing(room, bot, False)

    def _conversation_of(self, bot: str, op_id: str) -> str | None:
        result = self.core.storage.op_result(bot, BOT_DEVICE, op_id)
        return None if result is None else result.get("conversation_id")

    def _push(self, bot: str, room: str, op: dict[str, object]) -> None:
        op["conversation_id"] = room
        self.core.push(bot, BOT_DEVICE, [op])
