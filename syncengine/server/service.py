"""The reference server's service: what each endpoint does, between the routes and storage.

Every durable change goes through :meth:`ServerService.commit`: one write transaction
(:mod:`syncengine.server.writes` inside it), then the committed events are published to the
live hub, on the event loop thread, without yielding in between, so live delivery follows
``pos`` order. The service also owns the rate limiters and the simulator, whose bots act
through the same methods as real clients (so the member cap and every other rule hold for
them too).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from syncengine.protocol import codec, ops
from syncengine.protocol.bodies import (
    BlockList,
    ConversationList,
    ConversationSnapshot,
    HistoryMessage,
    LoginResponse,
    OpResult,
    PresenceEntry,
)
from syncengine.protocol.errors import BadCredentials, NotFound, RateLimited, Unauthorized
from syncengine.server import rules, writes
from syncengine.server.config import ServerConfig
from syncengine.server.live import Hub, LiveConnection
from syncengine.server.simulate import Simulator
from syncengine.server.storage import open_storage
from syncengine.server.storage.interface import (
    Identity,
    PasswordRecord,
    ServerStorage,
    WriteTx,
)

__all__ = ["ServerService"]

log = logging.getLogger("syncengine.server")

T = TypeVar("T")

_LIMITER_SWEEP = 10_000  # forget idle rate-limit buckets past this many keys


def _event_pos(text: str) -> int:
    """The ``pos`` of a stored event's JSON text."""
    pos = orjson.loads(text)["pos"]
    assert isinstance(pos, int), pos
    return pos


def _verify(password: str, record: PasswordRecord) -> bool:
    salt, digest, params = record
    return hmac.compare_digest(rules.hash_password(password, salt, params), digest)


class ServerService:
    """The server's state behind the routes: storage, live hub, limiters, simulator.

    Args:
        config: the server configuration.
        storage: the storage (by default the SQLite file of ``config.db_path``).
        clock: monotonic seconds for the rate limiters (injectable for tests).
    """

    def __init__(
        self,
        config: ServerConfig,
        storage: ServerStorage | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.storage: ServerStorage = storage or open_storage(config)
        self.hub = Hub(config, self.storage)
        self.rest_limiter = rules.RateLimiter(config.rate_per_s, config.rate_burst)
        self.pull_limiter = rules.RateLimiter(config.pull_rate_per_s, config.pull_burst)
        self.login_limiter = rules.RateLimiter(config.login_rate_per_s, config.login_burst)
        self.login_fail_limiter = rules.RateLimiter(
            config.login_fail_rate_per_s, config.login_fail_burst
        )
        self.login_fail_ip_limiter = rules.RateLimiter(
            config.login_fail_ip_rate_per_s, config.login_fail_ip_burst
        )
        self.register_limiter = rules.RateLimiter(config.register_rate_per_s, config.register_burst)
        if config.database_url:
            # A node of a multi-node server: live fan-out of every node's events, typing
            # and presence across nodes, shared rate limits.
            from syncengine.server import cluster

            cluster.attach(self)
        self.on_login: list[Callable[[str], None]] = []
        self.simulator: Simulator | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the simulator, when configured, and a cluster node's listener (on the
        running event loop)."""
        start_hub = getattr(self.hub, "start", None)
        if start_hub is not None:
            start_hub()
        if self.config.simulate and self.simulator is None:
            self.simulator = Simulator(
                self,
                self.config.simulate,
                self.config.simulate_rate,
                seed=self.config.simulate_seed,
            )
            self.simulator.start()

    async def stop(self) -> None:
        """Stop the simulator, timers, and close the storage."""
        if self.simulator is not None:
            await self.simulator.stop()
            self.simulator = None
        self.close()

    def close(self) -> None:
        """Stop timers and close the storage."""
        self.hub.shutdown()
        self.storage.close()

    def commit(self, change: Callable[[WriteTx], T]) -> T:
        """Run ``change`` in one write transaction, then publish what it committed."""
        with self.storage.write() as tx:
            result = change(tx)
        self.hub.publish(tx.committed)
        return result

    # --- identity ------------------------------------------------------------------------

    def _limit(
        self,
        limiter: rules.RateLimiter,
        key: str,
        *,
        take: bool = True,
        reason: str = "too many requests; slow down",
    ) -> None:
        """Take a token of ``key`` (only check that one is there unless ``take``).

        Raises:
            RateLimited: none is there, with the wait.
        """
        now = self.clock()
        if len(limiter.buckets) > _LIMITER_SWEEP:
            limiter.forget_idle(now)
        wait = limiter.take(key, now) if take else limiter.wait(key, now)
        if wait > 0:
            raise RateLimited(reason, retry_after_ms=rules.retry_after_ms(wait))

    def authenticate(self, authorization: str, budget: str = "rest") -> tuple[str, str]:
        """The ``(user, device)`` of an ``Authorization`` header, rate-limited per user.

        Args:
            authorization: the header's value.
            budget: the rate budget the request draws from (:func:`rules.rate_budget`):
                ``"pull"`` for catch-up pages, ``"rest"`` for everything else.

        Raises:
            Unauthorized: missing, invalid or expired token.
            RateLimited: too many requests.
        """
        scheme, _, token = authorization.partition(" ")
        identity = None
        if scheme.lower() == "bearer" and token.strip():
            identity = self.storage.authenticate(token.strip())
        if identity is None:
            raise Unauthorized("missing, invalid or expired token")
        limiter = self.pull_limiter if budget == "pull" else self.rest_limiter
        self._limit(limiter, identity.user)
        return identity.user, identity.device

    def authenticate_token(self, token: str) -> Identity | None:
        """The identity of a live connection's token, or None."""
        return self.storage.authenticate(token)

    async def set_password(self, user: str, password: str) -> None:
        """Create a user or replace their password (``serve --users``).

        Raises:
            Invalid: a bad user name or password.
        """
        ops.check_user(user)
        rules.check_password(password)
        salt = os.urandom(16)
        params = rules.scrypt_params(self.config.scrypt_n)
        digest = await asyncio.to_thread(rules.hash_password, password, salt, params)
        self.storage.set_password(user, salt, digest, params)

    async def login(
        self, user: str, password: str, device: str, address: str = ""
    ) -> LoginResponse:
        """Check (or, with open registration, create) a user and issue a token.

        Limits (each answered ``429`` with the wait): failed logins per client address and
        per (address, user name), checked before the password is (so a flood costs no
        hashing); registrations per address; successful logins per user name. A wrong
        password from one address never refuses the right one from another.

        Args:
            user: the user name.
            password: the password.
            device: the device name.
            address: the client's address (its limits' key, see
                :func:`~syncengine.server.rules.address_key`).

        Raises:
            BadCredentials: unknown user or wrong password.
            RateLimited: too many attempts.
        """
        by_address, by_name = rules.login_keys(rules.address_key(address), user)
        slow = "too many failed logins; slow down"
        self._limit(self.login_fail_ip_limiter, by_address, take=False, reason=slow)
        self._limit(self.login_fail_limiter, by_name, take=False, reason=slow)
        self._limit(self.login_limiter, user, take=False)
        record = self.storage.password_record(user)
        if record is None and self.config.registration_open:
            self._limit(self.register_limiter, by_address, reason="too many new users; slow down")
            salt = os.urandom(16)
            params = rules.scrypt_params(self.config.scrypt_n)
            digest = await asyncio.to_thread(rules.hash_password, password, salt, params)
            if self.storage.create_user(user, salt, digest, params):
                log.info("registered user %s", user)
            record = self.storage.password_record(user)
        if record is None or not await asyncio.to_thread(_verify, password, record):
            now = self.clock()
            self.login_fail_ip_limiter.take(by_address, now)
            self.login_fail_limiter.take(by_name, now)
            raise BadCredentials("unknown user or wrong password")
        self._limit(self.login_limiter, user)
        token = self.storage.issue_token(user, device, self.config.token_ttl_s)
        log.info("login user=%s device=%s", user, device)
        for hook in self.on_login:
            hook(user)
        return LoginResponse(
            token=token, user=user, device=device, expires_in_s=math.ceil(self.config.token_ttl_s)
        )

    # --- conversations -------------------------------------------------------------------

    def conversations(self, user: str) -> ConversationList:
        """The conversations ``user`` is a member of, and the head they were read at."""
        convs, head = self.storage.conversations_of(user)
        return ConversationList(conversations=tuple(convs), head=head)

    def create_conversation(
        self, actor: str, conversation_id: str, title: str, members: tuple[str, ...]
    ) -> tuple[ConversationSnapshot, bool]:
        """Create a conversation (idempotent for the same creator and payload).

        Returns:
            The conversation, and whether it was created now.
        """
        known_only = self.config.refuse_unknown_members

        def change(tx: WriteTx) -> tuple[ConversationSnapshot, bool]:
            created, _pos, _ts = writes.create_conversation(
                tx, actor, conversation_id, title, members, known_only=known_only
            )
            return writes.snapshot(tx, conversation_id, actor), created

        return self.commit(change)

    def rename(self, actor: str, conversation_id: str, title: str) -> ConversationSnapshot:
        """Change a conversation's title."""
        return self.commit(lambda tx: writes.rename(tx, actor, conversation_id, title))

    def set_member(
        self, actor: str, conversation_id: str, user: str, *, present: bool
    ) -> ConversationSnapshot:
        """Add or remove a member (the cap holds for every caller)."""
        return self.commit(
            lambda tx: writes.set_member(
                tx,
                actor,
                conversation_id,
                user,
                present=present,
                known_only=self.config.refuse_unknown_members,
            )
        )

    def blocks(self, user: str) -> BlockList:
        """The users ``user`` has blocked."""
        return BlockList(blocked=tuple(self.storage.blocked_by(user)))

    def set_block(self, user: str, other: str, *, blocked: bool) -> BlockList:
        """Block or unblock ``other`` for ``user`` (idempotent); the list after the change.

        A blocked user may not add ``user`` to a conversation (a new one or an existing
        one): that add is refused ``403 forbidden``. Nothing else changes.

        Raises:
            Invalid: blocking oneself.
            TooLarge: past the block list's cap.
        """
        current = self.storage.blocked_by(user)
        if blocked:
            rules.check_block(user, other, len(current), other in current)
        self.storage.set_blocked(user, other, blocked)
        return self.blocks(user)

    # --- operations and reads ------------------------------------------------------------

    def push(self, user: str, device: str, raw_ops: Sequence[Mapping[str, Any]]) -> list[OpResult]:
        """Apply a batch of operations in order, in one transaction; one result each."""
        known_only = self.config.refuse_unknown_members
        return self.commit(
            lambda tx: [
                writes.apply_op(tx, user, device, raw, known_only=known_only) for raw in raw_ops
            ]
        )

    def pull(
        self, user: str, since: int, limit: int, epoch: str | None = None
    ) -> tuple[list[str], int, bool]:
        """The JSON texts of the events visible to ``user`` after ``since``.

        The page holds at most ``limit`` events (capped) and at most ``config.page_bytes``
        bytes of them (always one event at least); a page cut for size continues right
        after its last event (``has_more``).

        Raises:
            CursorExpired: ``(epoch, since)`` does not continue this log (a restore), or the
                cursor is out of the retained log.
        """
        rules.check_epoch(epoch, since, self.storage.epoch_chain)
        texts, nxt, more = self.storage.pull(user, since, min(limit, ops.PULL_LIMIT_MAX))
        budget = self.config.page_bytes
        # A character is at most 4 bytes of UTF-8: most pages need no exact measure.
        if 4 * (sum(map(len, texts)) + len(texts)) > budget:
            keep = rules.page_cut([len(text.encode()) for text in texts], budget)
            if keep < len(texts):
                texts = texts[:keep]
                nxt, more = _event_pos(texts[-1]), True
        return texts, nxt, more

    def history(
        self, user: str, conversation_id: str, before: int | None, limit: int
    ) -> tuple[list[HistoryMessage], bool]:
        """A member's page of history, oldest first, and whether nothing older exists.

        Bounded like a pull page: at most ``config.page_bytes`` (always one message at
        least); a page cut for size keeps its newest messages and is not the end of history.
        """
        rules.require_member(self.storage.is_member(conversation_id, user))
        messages, end = self.storage.history(
            conversation_id, before, min(limit, ops.HISTORY_LIMIT_MAX)
        )
        budget = self.config.page_bytes
        # A body character is at most 6 bytes once escaped; the other fields under 1 KiB.
        if sum(6 * len(m.body) + 1024 for m in messages) > budget:
            sizes = [len(orjson.dumps(codec.encode_body(m))) for m in messages]
            keep = rules.history_cut(sizes, budget)
            if keep < len(messages):
                messages, end = messages[len(messages) - keep :], False
        return messages, end

    def presence(self, user: str) -> list[PresenceEntry]:
        """The presence of ``user`` and of everyone who shares a conversation with them."""
        return self.hub.presence_of(rules.presence_audience(user, self.storage.shared_users(user)))

    # --- the live channel ----------------------------------------------------------------

    def typing(self, conn: LiveConnection, conversation_id: str, typing: bool) -> None:
        """A live connection starts or stops typing.

        Raises:
            NotFound: the connection's user is not a member.
        """
        if not self.storage.is_member(conversation_id, conn.user):
            raise NotFound("no such conversation")
        self.hub.set_typing(conversation_id, conn.user, typing, conn)
