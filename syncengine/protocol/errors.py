"""The protocol's rejections: one machine code each, and the one table of their HTTP statuses.

A rule that refuses something raises a :class:`Rejection` subclass that names *what* went
wrong (``NotFound``, ``TooLarge``, …), never an HTTP status. Where a status must be written
(a REST response, the ``status_code`` of a rejected operation), it is read from
:data:`ERROR_STATUS`, the only place where codes meet statuses::

    Rejection                    code               status
     ├── BadRequest              bad_request        400
     ├── InvalidJson             invalid_json       400
     ├── Unauthorized            unauthorized       401
     ├── BadCredentials          bad_credentials    401
     ├── Forbidden               forbidden          403
     ├── NotFound                not_found          404
     │    └── UnknownUser        unknown_user       404
     ├── MethodNotAllowed        method_not_allowed 405
     ├── Conflict                conflict           409
     ├── CursorExpired           cursor_expired     410
     ├── TooLarge                too_large          413
     ├── Invalid                 invalid            422
     ├── OpIdConflict            op_id_conflict     422
     ├── RateLimited             rate_limited       429
     ├── Internal                internal           500
     └── Unavailable             unavailable        503

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ERROR_STATUS",
    "BadCredentials",
    "BadRequest",
    "Conflict",
    "CursorExpired",
    "Forbidden",
    "Internal",
    "Invalid",
    "InvalidJson",
    "MethodNotAllowed",
    "NotFound",
    "OpIdConflict",
    "RateLimited",
    "Rejection",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownUser",
]

#: Every error code of protocol v1 and the HTTP status it travels with.
ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,
    "invalid_json": 400,
    "unauthorized": 401,
    "bad_credentials": 401,
    "forbidden": 403,
    "not_found": 404,
    "unknown_user": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "cursor_expired": 410,
    "too_large": 413,
    "invalid": 422,
    "op_id_conflict": 422,
    "rate_limited": 429,
    "internal": 500,
    "unavailable": 503,
}


class Rejection(Exception):
    """A request or operation refused by a rule: a machine code and a one-line reason.

    Attributes:
        code: the machine-readable code (a key of :data:`ERROR_STATUS`).
        reason: one human-readable line.
        extra: more fields for the JSON body (``oldest_pos``, ``retry_after_ms``).
    """

    code: ClassVar[str] = "invalid"

    def __init__(self, reason: str, **extra: Any) -> None:
        super().__init__(f"{self.code}: {reason}")
        self.reason = reason
        self.extra = extra

    @property
    def status(self) -> int:
        """The HTTP status of this rejection, read from :data:`ERROR_STATUS`."""
        return ERROR_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        """The JSON error body: ``{"code", "reason", **extra}``."""
        return {"code": self.code, "reason": self.reason, **self.extra}


class BadRequest(Rejection):
    """A malformed query parameter."""

    code = "bad_request"


class InvalidJson(Rejection):
    """A request body that is not JSON."""

    code = "invalid_json"


class Unauthorized(Rejection):
    """A missing, invalid or expired token."""

    code = "unauthorized"


class BadCredentials(Rejection):
    """An unknown user or a wrong password at login."""

    code = "bad_credentials"


class Forbidden(Rejection):
    """The caller may see the thing but not change it."""

    code = "forbidden"


class NotFound(Rejection):
    """No such thing, or the caller may not know it exists (a non-member)."""

    code = "not_found"


class UnknownUser(NotFound):
    """A member named who has no account on this server (a typo, a user never registered)."""

    code = "unknown_user"


class MethodNotAllowed(Rejection):
    """A known path with a method it does not take."""

    code = "method_not_allowed"


class Conflict(Rejection):
    """The change contradicts the current state (an id taken, a deleted message)."""

    code = "conflict"


class CursorExpired(Rejection):
    """The cursor is outside the retained event log; the body carries ``oldest_pos``."""

    code = "cursor_expired"


class TooLarge(Rejection):
    """A body, batch, title or member list over its limit."""

    code = "too_large"


class Invalid(Rejection):
    """A value of the wrong type or form."""

    code = "invalid"


class OpIdConflict(Rejection):
    """An op id already used with another payload."""

    code = "op_id_conflict"


class RateLimited(Rejection):
    """Too many requests; the body carries ``retry_after_ms``."""

    code = "rate_limited"


class Internal(Rejection):
    """A bug on the server (the details go to its log, not the wire)."""

    code = "internal"


class Unavailable(Rejection):
    """The server cannot answer now (an injected fault, an overload)."""

    code = "unavailable"
