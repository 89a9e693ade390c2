"""The ``syncengine`` command line: thin — parse, call, print.

Reads (``status``, ``conversations``, ``messages``, ``outbox``) open the store directly: SQLite
in WAL mode lets them run while a daemon writes. Writes (``create``, ``send``, ``retry``) go
through the engine's public API and return; whichever process syncs the store (the daemon, or
a later ``syncengine sync``) pushes them. Commands that talk to the server themselves
(``sync``, ``send --wait`` and ``tail`` without a daemon) take the store's single-writer lock
for as long as they sync, so they never race a daemon. That coordination lives in
:mod:`syncengine.local`, shared with the daemon and embedding apps; this package only parses,
calls and prints.

Output: rich tables for people; with ``--json`` exactly one JSON document on stdout (JSON lines
for ``tail``), nothing else there. Progress and errors go to stderr. A user mistake is one line
on stderr and exit status 1; a usage error (bad option) exits with 2.

Modules: :mod:`~syncengine.cli.app` (the group), :mod:`~syncengine.cli.context` (shared
options and errors), :mod:`~syncengine.cli.render` (JSON documents and tables), and one module
per family of commands (``account``, ``reads``, ``writes``, ``sync``, ``run``).
"""

from __future__ import annotations

from syncengine.cli.app import cli, main
from syncengine.cli.context import CliError
from syncengine.cli.reads import status_doc
from syncengine.cli.render import event_doc

__all__ = ["CliError", "cli", "event_doc", "main", "status_doc"]
