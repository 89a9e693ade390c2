"""The chat operations an app names by message id: :class:`ChatMixin`, part of ``SyncEngine``.

``SyncEngine`` keeps its lifecycle, reads and the low-level writes (``edit`` and ``delete``
take a conversation and either a server id or a send's op id); here are the writes as a chat
user thinks of them: "edit this message", "cancel that operation". Each one is still an
outbox operation, durable before it returns and pushed when the server can be reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from syncengine.client.bus import EventBus
from syncengine.client.session import Session
from syncengine.errors import NotFound, UsageError
from syncengine.events import MessageQueued
from syncengine.models import Message, OpKind, OutboxItem
from syncengine.store import Store

__all__ = ["ChatMixin"]


class _Engine(Protocol):
    """What the mixin uses of the engine it is mixed into."""

    @property
    def store(self) -> Store: ...

    def _queue(
        self, kind: OpKind, cid: str, payload: dict[str, Any], op_id: str | None
    ) -> OutboxItem: ...

    _bus: EventBus
    _session: Session

    def _announce(self, message: Message) -> None: ...


def _target(store: Store, message_id: str) -> tuple[Message, dict[str, Any]]:
    """The message ``message_id`` names and the payload fields that name it on the wire.

    A server id is sent as ``message_id``; a local echo not yet acknowledged is named by the
    op id of its send (``target_op_id``), which the server resolves after the send.

    Raises:
        NotFound: no stored message has that server id, nor is one of this user's sends.
    """
    message = store.message(message_id)
    if message is None:
        raise NotFound(f"no message {message_id} in the store")
    if message.id is not None:
        return message, {"message_id": message.id}
    return message, {"target_op_id": message.op_id}


class ChatMixin:
    """Writes named by message id; mixed into :class:`~syncengine.SyncEngine`."""

    def _announce(self: _Engine, message: Message) -> None:
        """Tell subscribers a message was queued, and wake the session to push it."""
        self._bus.emit(MessageQueued(message=message))
        self._session.kick()

    async def reply(
        self: _Engine,
        conversation_id: str,
        body: str,
        reply_to: str,
        *,
        op_id: str | None = None,
    ) -> Message:
        """Queue a message that replies to another one. Returns its local echo (PENDING).

        Args:
            conversation_id: the conversation of both messages.
            body: the reply (1 to 16,000 characters).
            reply_to: the replied-to message: its server id, or the op id of a send not yet
                acknowledged (the server resolves it after that send).
            op_id: an idempotency key (sending again with it queues nothing).

        Raises:
            NotFound: no such message in that conversation.
            UsageError: an empty or too long body, or an op id used by another operation.
        """
        message, target = _target(self.store, reply_to)
        if message.conversation_id != conversation_id:
            raise NotFound(f"no message {reply_to} in conversation {conversation_id}")
        payload = {"body": body}
        if "message_id" in target:
            payload["reply_to"] = target["message_id"]
        else:
            payload["reply_to_op_id"] = target["target_op_id"]
        item, created = self.store.enqueue(OpKind.SEND, conversation_id, payload, op_id=op_id)
        echo = self.store.message_by_op(item.op_id)
        if echo is None:  # the op id exists but is not a send
            raise UsageError(f"op id {item.op_id} is already used by a {item.kind.value}")
        if created:
            self._announce(echo)
        return echo

    async def edit_message(
        self: _Engine, message_id: str, body: str, *, op_id: str | None = None
    ) -> OutboxItem:
        """Queue an edit of one's own message.

        Args:
            message_id: the server id, or the op id of a send not yet acknowledged.
            body: the new text (1 to 16,000 characters).
            op_id: an idempotency key (queueing the same op id again queues nothing).

        Raises:
            NotFound: no such message in the store.
            UsageError: an empty or too long body.
        """
        message, target = _target(self.store, message_id)
        return self._queue(OpKind.EDIT, message.conversation_id, {"body": body, **target}, op_id)

    async def delete_message(
        self: _Engine, message_id: str, *, op_id: str | None = None
    ) -> OutboxItem:
        """Queue the deletion of one's own message.

        Args:
            message_id: the server id, or the op id of a send not yet acknowledged.
            op_id: an idempotency key (queueing the same op id again queues nothing).

        Raises:
            NotFound: no such message in the store.
        """
        message, target = _target(self.store, message_id)
        return self._queue(OpKind.DELETE, message.conversation_id, target, op_id)

    async def cancel(self: _Engine, op_id: str) -> OutboxItem:
        """Cancel an operation that has not been sent: its outbox row and local echo go away.

        Cancellable: a send or a conversation creation that is PENDING and never attempted,
        or FAILED (the server refused it). A cancel is a deletion, not an outbox state.

        Args:
            op_id: the operation's id.

        Returns:
            The operation as it was before it was cancelled.

        Raises:
            NotFound: no such operation in the outbox.
            UsageError: it was already sent (or may have been), is an edit, deletion or read
                receipt (their local change cannot be undone), or queued operations depend
                on it (cancel those first).
        """
        return self.store.cancel(op_id)

    async def add_members(
        self: _Engine, conversation_id: str, users: Sequence[str]
    ) -> list[OutboxItem]:
        """Queue adding each of ``users`` to a conversation (one ``add_member`` each).

        The members list in the store changes when the server's ``conversation_updated``
        arrives (a member the server refuses, such as an unknown user, never shows up).

        Args:
            conversation_id: the conversation (you must be a member).
            users: user names; adding a member again changes nothing.

        Returns:
            The queued operations, in order.

        Raises:
            NotFound: the conversation is not in the store.
            UsageError: a malformed user name (nothing is queued after it).
        """
        return [
            self._queue(OpKind.ADD_MEMBER, conversation_id, {"user": user}, None) for user in users
        ]

    async def remove_members(
        self: _Engine, conversation_id: str, users: Sequence[str]
    ) -> list[OutboxItem]:
        """Queue removing each of ``users`` from a conversation (one ``remove_member`` each).

        Removing yourself leaves the conversation. The store follows the server's
        ``conversation_updated``.

        Args:
            conversation_id: the conversation (you must be a member).
            users: user names; removing a non-member changes nothing.

        Returns:
            The queued operations, in order.

        Raises:
            NotFound: the conversation is not in the store.
            UsageError: a malformed user name (nothing is queued after it).
        """
        return [
            self._queue(OpKind.REMOVE_MEMBER, conversation_id, {"user": user}, None)
            for user in users
        ]

    async def react(
        self: _Engine,
        message_id: str,
        emoji: str,
        *,
        remove: bool = False,
        op_id: str | None = None,
    ) -> OutboxItem:
        """Queue adding (or, with ``remove``, taking back) one's reaction to a message.

        Shown at once in ``Message.reactions``; the server's ``reaction_changed`` confirms it.

        Args:
            message_id: the message's server id (or the op id of one's own send, once the
                server has acknowledged it).
            emoji: the reaction (1 to 32 characters, no whitespace).
            remove: take the reaction back instead of adding it.
            op_id: an idempotency key (queueing the same op id again queues nothing).

        Raises:
            NotFound: no such message in the store.
            UsageError: a bad emoji, or a message not yet sent (react once it is).
        """
        message, target = _target(self.store, message_id)
        if "message_id" not in target:
            raise UsageError(f"message {message_id} is not sent yet: react once it is")
        payload = {"message_id": target["message_id"], "emoji": emoji, "remove": remove}
        return self._queue(OpKind.REACT, message.conversation_id, payload, op_id)
