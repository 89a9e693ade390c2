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
import socket
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

__all__ = [
    "encode_json",
    "explain",
    "is_tls_failure",
    "leaf_exception",
    "map_exceptions",
    "network_cause",
    "raise_mapped",
]

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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from (and the first leaf of any group), 20 deep."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            return
        yield seen
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
            continue
        seen = seen.__cause__ or seen.__context__


def network_cause(exc: BaseException) -> str:
    """Why a connection failed, in the user's words: refused, TLS, DNS, timeout, cut.

    httpx and websockets report most of these as one ``ConnectError``; the operating system's
    error underneath (found by walking the cause chain) tells them apart.
    """
    texts = []
    for link in _chain(exc):
        text = str(link)
        texts.append(text.lower())
        if isinstance(link, ConnectionRefusedError):
            return "connection refused (is the server running, on that host and port?)"
        if isinstance(link, socket.gaierror):
            return "host name not found (DNS lookup failed: check the host in the URL)"
        if isinstance(link, ssl.SSLError):
            return (
                "TLS handshake failed (does the server speak https? a plain-http server "
                "needs an http:// URL)"
            )
        if isinstance(link, TimeoutError) or type(link).__name__.endswith("Timeout"):
            return "timed out (the server did not answer in time)"
        if isinstance(link, ConnectionResetError | BrokenPipeError | EOFError):
            return "the connection was cut by the server or the network"
    joined = " ".join(texts)
    if "refused" in joined or "errno 111" in joined:
        return "connection refused (is the server running, on that host and port?)"
    if "name or service not known" in joined or "nodename nor servname" in joined:
        return "host name not found (DNS lookup failed: check the host in the URL)"
    if "ssl" in joined or "tls" in joined or "wrong_version_number" in joined:
        return (
            "TLS handshake failed (does the server speak https? a plain-http server needs "
            "an http:// URL)"
        )
    if "disconnected" in joined or "reset" in joined:
        return "the connection was cut by the server or the network"
    return type(leaf_exception(exc)).__name__


def explain(exc: BaseException) -> str:
    """One line for an exception: its message on one line, else its type's name."""
    return " ".join(str(exc).split()) or type(exc).__name__


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
        raise ServerUnavailable(f"cannot reach {where}: {network_cause(exc)}") from exc
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
