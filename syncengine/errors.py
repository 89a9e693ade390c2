"""The exceptions syncengine raises. Callers never see sqlite3, httpx or websockets errors.

Foreign exceptions are translated at the layer that touches the foreign library
(``store/`` for sqlite3; ``transport/boundary.py`` for httpx, websockets, ssl and socket
errors), with ``raise ... from exc`` so the cause stays inspectable. Which error an HTTP
status becomes is read from one table, ``core/policy.py::STATUS_TABLE``.

::

    SyncEngineError
    ├── UsageError                 you called the API wrongly (bad argument, unknown id,
    │                              a malformed server URL, a body JSON cannot carry)
    │   ├── NotFound               no such conversation / message / operation in the store
    │   └── NotLoggedIn            no store, no account or no token here: log in first
    ├── StoreError                 the local SQLite store
    │   ├── StoreLocked            another process held the write lock past the busy timeout
    │   ├── StoreFull              the disk (or max_page_count) is full; nothing was written
    │   ├── StoreCorrupt           the file is not a usable database (``moved_to`` says where)
    │   ├── SchemaTooNew           written by a newer syncengine; refused, left untouched
    │   └── StoreLockHeld          another daemon owns this store (``pid``)
    ├── WireError                  a frame or payload broke the protocol (``field`` names where)
    ├── TransportError             the network, transient: retry with backoff
    │   ├── ServerUnavailable      5xx, 408, connection refused or cut, timeouts
    │   ├── RateLimited            429 (``retry_after`` seconds)
    │   └── NotSynced              a sync or a wait for an ack did not finish; work stays queued
    ├── TLSVerificationFailed      the server's certificate did not verify (permanent)
    ├── AuthFailed                 401: credentials refused or token expired (log in again)
    ├── Rejected                   a permanent 4xx for one request or operation (or an
    │                              unexpected status, such as a redirect, which is retried)
    │   └── OperationRejected      the operation waited for is FAILED (``op_id``)
    ├── SyncStopped                the background sync loop stopped on an unclassified error
    └── CursorExpired              410: the cursor is older than the server's retention
"""

from __future__ import annotations

__all__ = [
    "AuthFailed",
    "CursorExpired",
    "NotFound",
    "NotLoggedIn",
    "NotSynced",
    "OperationRejected",
    "RateLimited",
    "Rejected",
    "SchemaTooNew",
    "ServerUnavailable",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreLockHeld",
    "StoreLocked",
    "SyncEngineError",
    "SyncStopped",
    "TLSVerificationFailed",
    "TransportError",
    "UsageError",
    "WireError",
]


class SyncEngineError(Exception):
    """Root of every exception syncengine raises on purpose."""


class UsageError(SyncEngineError, ValueError):
    """The caller passed something the engine cannot act on."""


class NotFound(UsageError, LookupError):
    """The conversation, message or operation named does not exist in the store."""


class NotLoggedIn(UsageError):
    """The store is missing, has no account, or its token was removed: log in first."""


class StoreError(SyncEngineError):
    """The local store could not do what was asked; nothing partial was committed."""


class StoreLocked(StoreError):
    """Another process held the database write lock for longer than the busy timeout."""


class StoreFull(StoreError):
    """The disk is full (or the database reached ``max_page_count``); the write was rolled back."""


class StoreCorrupt(StoreError):
    """The database file is damaged or not a database.

    Attributes:
        path: the file that was found damaged.
        moved_to: where it was moved aside (never deleted), or ``None`` if it was left in place.
    """

    def __init__(self, message: str, *, path: str, moved_to: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.moved_to = moved_to


class SchemaTooNew(StoreError):
    """The database was written by a newer syncengine; it is refused and left untouched."""


class StoreLockHeld(StoreError):
    """Another process (a daemon) or syncing engine already syncs this store (one writer
    per store, guarantee G6).

    Attributes:
        pid: the process id written in the lock file, if it could be read.
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class WireError(SyncEngineError, ValueError):
    """A frame or payload does not follow the protocol.

    Attributes:
        field: a dotted path to the offending part (``"frame"`` for the whole frame).
    """

    def __init__(self, message: str, *, field: str = "frame") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class TransportError(SyncEngineError):
    """A transient network failure: the request may be retried."""


class ServerUnavailable(TransportError):
    """The server could not be reached or answered 5xx."""


class RateLimited(TransportError):
    """The server answered 429; ``retry_after`` seconds is its requested pause."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotSynced(TransportError):
    """A sync, or a wait for an operation's acknowledgement, did not finish in time.

    Nothing was lost: the queued work stays queued for the next sync (the daemon's, or a
    later ``syncengine sync``).
    """


class TLSVerificationFailed(SyncEngineError):
    """The server's TLS certificate did not verify. Not retried: fix the CA or the host."""


class AuthFailed(SyncEngineError):
    """The server refused the credentials or the token (401). Log in again; nothing is lost."""


class Rejected(SyncEngineError):
    """The server permanently refused a request or one operation (a 4xx other than 401/410/429).

    Attributes:
        code: the server's machine-readable code (``"not_found"``, ``"too_large"``, ...).
        reason: the server's human-readable reason.
        status: the HTTP status, when there was one.
    """

    def __init__(self, code: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.status = status


class OperationRejected(Rejected):
    """The operation waited for was refused by the server and parked as FAILED.

    Attributes:
        op_id: the operation.
        last_error: the outbox row's ``last_error`` (``"code: reason"``).
    """

    def __init__(self, op_id: str, last_error: str | None) -> None:
        code, _sep, reason = (last_error or "").partition(": ")
        super().__init__(code or "rejected", reason or (last_error or ""))
        # The message names the operation; code and reason stay apart for callers.
        self.args = (f"the server rejected {op_id}: {last_error}",)
        self.op_id = op_id
        self.last_error = last_error


class SyncStopped(SyncEngineError):
    """The background sync loop stopped on an error it does not classify (a bug).

    The original exception is the ``__cause__``; the engine stays FAILED until reopened.
    """


class CursorExpired(SyncEngineError):
    """The server no longer serves events from this cursor (410); a resync is needed."""
