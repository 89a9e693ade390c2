"""Log redaction: bearer tokens and secrets never reach a log record, even at DEBUG.

Libraries log secrets in places one does not expect: websockets logs every frame at DEBUG
(the live channel's first frame carries the token), some HTTP stacks log request headers.
:func:`install_redaction` makes every log record created in the process pass through
:func:`redact`, whatever logger created it and whatever handler receives it, by wrapping the
logging module's record factory. :class:`RedactingFilter` does the same for one handler or
logger, for applications that want it there as well.

What is redacted (the secret is replaced by ``[redacted]``, the key is kept):

- ``Bearer <token>`` (``Authorization`` headers, in any case);
- the values of ``token``, ``access_token``, ``refresh_token``, ``password`` and
  ``authorization`` keys written as JSON (``"token": "…"``), Python reprs (``'token': '…'``),
  or ``key=value`` pairs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["REDACTED", "RedactingFilter", "install_redaction", "redact"]

REDACTED = "[redacted]"

_SECRET_KEYS = r"(?:access_token|refresh_token|token|password|authorization)"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Bearer credentials, wherever they appear (headers, reprs of header lists).
    (re.compile(r"(?i)(\bbearer\s+)(?!\[redacted\])[^\s'\",;)\]}]+"), rf"\1{REDACTED}"),
    # "token": "value" / 'token': 'value' / b'token': b'value' (JSON and Python reprs).
    (
        re.compile(rf"(?i)([\"']{_SECRET_KEYS}[\"']\s*:\s*b?)([\"'])(?:\\.|(?!\2).)*(\2|$)"),
        rf"\1\2{REDACTED}\3",
    ),
    # token=value (query strings, form bodies, key=value log lines).
    (re.compile(rf"(?i)(\b{_SECRET_KEYS}=)[^\s&'\",;]+"), rf"\1{REDACTED}"),
)


def redact(text: str) -> str:
    """Return ``text`` with bearer tokens, token and password values replaced.

    Args:
        text: any text, typically a formatted log message.

    Returns:
        The same text, with each secret replaced by ``[redacted]``.
    """
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _clean_arg(arg: object) -> object:
    """One formatting argument, redacted if its text carries a secret."""
    if arg is None or isinstance(arg, (bool, int, float)):
        return arg
    try:
        text = arg if isinstance(arg, str) else str(arg)
    except Exception:  # an argument whose str() fails: logging reports it later
        return arg
    cleaned = redact(text)
    return arg if cleaned == text else cleaned


def _redact_record(record: logging.LogRecord) -> None:
    """Rewrite a record in place so that its message, exception and stack carry no secret.

    Arguments are cleaned one by one (formatters such as uvicorn's access formatter read
    ``record.args``); if the formatted message still carries a secret, it replaces the
    format string and the arguments are dropped.
    """
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_clean_arg(arg) for arg in record.args)
    elif isinstance(record.args, dict):
        record.args = {key: _clean_arg(value) for key, value in record.args.items()}
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: logging reports it later, we leave it be
        message = None
    if message is not None:
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
    color = record.__dict__.get("color_message")
    if isinstance(color, str):
        record.color_message = redact(color)
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A filter that redacts secrets from every record it sees and never drops one.

    Attach it to a handler (``handler.addFilter(RedactingFilter())``) to protect that
    handler's output; :func:`install_redaction` protects every record in the process.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place.

        Args:
            record: the record about to be handled.

        Returns:
            Always True: redaction never drops a record.
        """
        _redact_record(record)
        return True


_install_lock = threading.Lock()
_installed = False


def install_redaction() -> None:
    """Redact every log record created in this process from now on. Idempotent.

    Wraps the current log record factory, so records of uvicorn, websockets, httpx, httpcore,
    starlette, syncengine and any other library are cleaned when they are created, before
    any logger filter or handler (pytest's capture included) sees them.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
