"""The engine's side of a transport that numbers nothing and names events by id (Matrix).

Three small pieces the session uses when a transport's cursor is unordered:

- :func:`build_transport`: the transport for a server and the protocol recorded in the store
  (``meta.protocol``: ``matrix`` or ``v1``), and :func:`detect_protocol` to choose it (a
  server answering ``GET /_matrix/client/versions`` is Matrix);
- :class:`StoreBoundTransport`: wraps the Matrix transport so that operations are resolved
  through the store before a push (an edit's ``target_op_id`` and a read position's ``seq``
  become event ids; an operation that cannot be resolved yet is left unanswered, so it is
  retried with its conversation held back) and the live link starts from the persisted cursor;
- :func:`account_user`: the identity stored for the account (the Matrix user id
  ``@name:server``, the sender of our own echoes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from syncengine.core.unordered import (
    op_targets,
    split_live_batch,
    sync_before_push,
    with_targets,
)
from syncengine.errors import ServerUnavailable
from syncengine.transport.base import check_url, make_ssl_context

if TYPE_CHECKING:
    from syncengine.client.config import EngineConfig
    from syncengine.store import Store
    from syncengine.transport.base import Transport

__all__ = [
    "PROTOCOLS",
    "StoreBoundTransport",
    "account_user",
    "apply_unordered_batch",
    "build_transport",
    "choose_protocol",
    "detect_protocol",
    "push_and_catch_up",
    "push_then_pull",
    "same_account",
    "wrap",
]

#: The protocols a store may record (``auto`` is resolved at login).
PROTOCOLS = ("auto", "matrix", "v1")


async def detect_protocol(
    server: str, *, allow_insecure: bool = False, ca_file: str | None = None
) -> str:
    """``matrix`` when ``server`` answers ``GET /_matrix/client/versions`` with a
    ``versions`` list, else ``v1``.

    Raises:
        ServerUnavailable: the server could not be reached at all.
    """
    import httpx  # lazily: every engine imports this module, few logins need httpx here

    base = check_url(server, allow_insecure=allow_insecure)
    verify: Any = make_ssl_context(ca_file) if base.startswith("https") else True
    try:
        async with httpx.AsyncClient(timeout=10.0, verify=verify) as client:
            resp = await client.get(f"{base}/_matrix/client/versions")
    except httpx.HTTPError as exc:
        raise ServerUnavailable(f"cannot reach {base}: {exc}") from None
    try:
        body = resp.json() if resp.status_code == 200 else None
    except ValueError:
        body = None
    return "matrix" if isinstance(body, dict) and isinstance(body.get("versions"), list) else "v1"


async def choose_protocol(session: Any, server: str) -> None:
    """Record the protocol of ``server`` in the store's meta before a login, when neither a
    ``transport_factory`` nor an earlier login (or ``--protocol``) chose it: a server that
    answers ``/_matrix/client/versions`` is Matrix. An unreachable server is left undecided
    (the login itself then reports why, TLS failures included)."""
    store = session.require_store()
    if session.config.transport_factory is not None or store.get_meta("protocol"):
        return
    try:
        protocol = await detect_protocol(
            server, allow_insecure=session.config.allow_insecure, ca_file=session.config.ca_file
        )
    except Exception:
        return
    store.set_meta(protocol=protocol)


def build_transport(
    server: str, config: EngineConfig, protocol: str | None, store: Callable[[], Store | None]
) -> Transport | None:
    """The Matrix transport for ``server`` when the store records ``protocol`` ``matrix``
    (wrapped in :class:`StoreBoundTransport`); None for protocol v1 (the caller builds it)."""
    if protocol != "matrix":
        return None
    from syncengine.transport.matrix import MatrixTransport

    ctx = make_ssl_context(config.ca_file) if server.startswith("https") else None
    inner = MatrixTransport(
        server,
        ssl_context=ctx,
        allow_insecure=config.allow_insecure,
        timeout_s=config.request_timeout_s,
    )
    return StoreBoundTransport(inner, store)


def wrap(transport: Any, store: Callable[[], Store | None]) -> Any:
    """``transport`` wrapped in :class:`StoreBoundTransport` when its cursor is unordered
    (a ``transport_factory`` may hand the engine a bare Matrix transport)."""
    caps = getattr(transport, "capabilities", None)
    if (
        caps is None
        or getattr(caps, "ordered_cursor", True)
        or isinstance(transport, StoreBoundTransport)
    ):
        return transport
    return StoreBoundTransport(transport, store)


class StoreBoundTransport:
    """A transport with an unordered cursor, bound to the engine's store (see the module
    docstring). Everything not defined here is the wrapped transport's."""

    def __init__(self, inner: Any, store: Callable[[], Store | None]) -> None:
        self.inner = inner
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def push(self, ops: Sequence[dict[str, Any]]) -> Any:
        """Resolve each operation's targets through the store, then push."""
        store = self._store()
        if store is not None:
            ops = [_resolve(store, op) for op in ops]
        return await self.inner.push(ops)

    async def connect_live(self, since: Any = None) -> Any:
        """The live link from ``since``, else from the persisted cursor (the link is then the
        catch-up: it owns the cursor while it is up)."""
        store = self._store()
        if since is None and store is not None:
            since = store.cursor()
        return await self.inner.connect_live(since)


def _resolve(store: Store, op: dict[str, Any]) -> dict[str, Any]:
    by_op, at_seq = op_targets(op)
    event_id = None
    if by_op is not None:
        event_id = store.message_event_id(by_op)
    elif at_seq is not None:
        event_id = store.event_id_at(str(op.get("conversation_id")), at_seq)
    return with_targets(op, event_id)


def account_user(transport: Any, user: str) -> str:
    """The user name to store for the account: the transport's own id when it has one
    (Matrix: ``@name:server``, the sender of our echoes), else what was typed."""
    own = getattr(transport, "user_id", None)
    return own if isinstance(own, str) and own else user


def same_account(stored: str | None, user: str) -> bool:
    """True when a store recorded for ``stored`` may log in as ``user`` (a Matrix store
    records ``@user:server`` for the localpart ``user``)."""
    if not stored or stored == user:
        return True
    return stored.startswith("@") and stored[1:].partition(":")[0] == user.lstrip("@").lower()


async def apply_unordered_batch(session: Any, batch: Sequence[Any]) -> None:
    """Apply a batch of live events from a link that owns an opaque cursor: each run of
    events is committed with the cursor of the Checkpoint that closed it (G3); a ``Gap``
    becomes a per-conversation :class:`~syncengine.events.Discontinuity` (``emit_new``)."""
    core, exchange = session.core, session.exchange
    for segment in split_live_batch(batch):
        cursor = core.receive_checkpoint(segment.cursor) if segment.cursor is not None else None
        if segment.durable or cursor is not None:
            await exchange.apply_events(segment.durable, cursor=cursor, synced=cursor is not None)
        if cursor is not None:
            core.committed(cursor)
            session.kick()  # a session waiting to be caught up goes on
        kept = session.require_store().apply_ephemeral(segment.other) if segment.other else []
        exchange.emit_new([*segment.durable, *kept, *segment.gaps])  # a Gap: a Discontinuity


async def push_then_pull(session: Any) -> tuple[int, int]:
    """One push-and-pull round (``sync_once``); returns (pushed, pulled). With an opaque
    cursor (Matrix) it pulls first, so that echoes confirm operations whose acknowledgement
    was lost before they are replayed, then pushes and pulls again (the new echoes)."""
    exchange = session.exchange
    pulled = 0
    if sync_before_push(session.core.capabilities):
        pulled += await exchange.catch_up()
    pushed = await exchange.push_all()
    pulled += await exchange.catch_up()
    return pushed, pulled


async def push_and_catch_up(session: Any, tasks: list[Any]) -> None:
    """A session's SYNCING step. Protocol v1: push, then pull from the cursor. A link that
    owns an opaque cursor: wait for its first Checkpoint to be committed (it streams from the
    persisted cursor: then everything missed is stored; a link failure is raised), then push.
    Syncing first lets echoes confirm operations whose acknowledgement was lost before they
    are replayed (Synapse forgets a txnId after 24 h)."""
    if not session.core.link_owns_cursor:
        await push_then_pull(session)
        return
    while not session.core.caught_up:
        await session._wait(tasks, 5.0)
    await session.exchange.push_all()
