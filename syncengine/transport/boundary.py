"""The exception boundary of the transports (after httpcore's ``map_exceptions``).

Rules of this file: every call into httpx or websockets runs inside :func:`map_exceptions`,
so no foreign exception (``httpx.*``, ``websockets.*``, ``h11``, ``ssl``, ``OSError``, the
``ValueError``/``OverflowError``/``UnicodeError`` of URL parsing or header encoding) reaches a
caller of the transport. Each becomes a :mod:`syncengine.errors` exception, raised ``from`` the
original so the cause stays inspectable. syncengine's own exceptions pass through unchanged.

This module imports neither httpx nor websockets: ``rest.py`` and ``live.py`` pass in, as
``rules``, their library's exception types and the error each becomes.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import orjson

from syncengine.errors import (
    ServerUnavailable,
    SyncEngineError,
    TLSVerificationFailed,
    UsageError,
)

__all__ = ["encode_json", "is_tls_failure", "leaf_exception", "map_exceptions", "raise_mapped"]

#: A mapping rule: the foreign exception types it covers, and how to build our error.
Rule = tuple[tuple[type[BaseException], ...], Callable[[BaseException], Exception]]


def is_tls_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a failed certificate check.

    httpx wraps the ``ssl`` error in its own ``ConnectError``, sometimes several levels deep;
    only the chain tells a bad certificate (permanent) from a refused connection (transient).
    """
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def leaf_exception(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio's connect raises them), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def raise_mapped(exc: BaseException, where: str, rules: tuple[Rule, ...] = ()) -> NoReturn:
    """Raise the :mod:`syncengine.errors` exception for ``exc`` (see :func:`map_exceptions`).

    The function form, for a hot path where a ``try``/``except`` costs nothing until an
    exception is raised and a context manager would cost a generator per call.
    """
    leaf = leaf_exception(exc)
    if isinstance(leaf, SyncEngineError):
        raise leaf from exc  # ours, wrapped in a group by a task group
    if is_tls_failure(leaf):
        raise TLSVerificationFailed(f"TLS verification failed for {where}: {leaf}") from exc
    for types, build in rules:
        if isinstance(leaf, types):
            raise build(leaf) from exc
    if isinstance(leaf, UnicodeError | ValueError | OverflowError):
        # URL parsing (a port out of range or not a number, an unclosed IPv6 bracket) and
        # header encoding (a non-ASCII token or device) fail before any byte is sent: the
        # caller passed something unusable, retrying would fail the same way.
        raise UsageError(f"unusable request to {where}: {leaf}") from exc
    if isinstance(leaf, OSError | EOFError):
        # OSError covers refused and reset connections, DNS failures and ssl.SSLError.
        raise ServerUnavailable(f"cannot reach {where}: {type(leaf).__name__}") from exc
    raise exc


@contextlib.contextmanager
def map_exceptions(where: str, rules: tuple[Rule, ...] = ()) -> Iterator[None]:
    """Translate foreign exceptions raised in the block into :mod:`syncengine.errors`.

    Order of the checks: syncengine's own exceptions pass through; a failed certificate check
    anywhere in the cause chain is :class:`TLSVerificationFailed`; then ``rules`` in order;
    then URL and header errors are :class:`UsageError` and OS-level network errors
    :class:`ServerUnavailable`. Anything else (a bug) propagates unchanged. Exception groups
    are read by their first leaf. Cancellation is never caught.

    Args:
        where: the URL or endpoint, for the messages (never a token).
        rules: the library's own exception types and how to build our error from each.
    """
    try:
        yield
    except SyncEngineError:
        raise
    except Exception as exc:
        raise_mapped(exc, where, rules)


def encode_json(obj: Any) -> bytes:
    """A request body as JSON bytes.

    Raises:
        UsageError: ``obj`` holds something JSON cannot carry (a set, an object, a surrogate,
            an integer beyond 64 bits).
    """
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise UsageError(f"request body is not JSON-serialisable: {exc}") from exc
