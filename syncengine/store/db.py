"""Opening the SQLite file safely, and translating sqlite3 errors into syncengine's.

- The file is created 0600 *before* SQLite opens it (SQLite gives -wal and -shm the mode of
  the main file), each folder it needs 0700; group and other permissions on existing files
  are removed, and no permission is ever added.
- WAL journal, ``synchronous=FULL``, a busy timeout; every write in ``BEGIN IMMEDIATE``.
- A file that is not a database, or is damaged, raises :class:`StoreCorrupt` and is left where
  it is; :func:`move_aside` renames it (never deletes it) when the caller decides to start over.
- A database written by a newer syncengine raises :class:`SchemaTooNew` and is not touched.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sqlite_utils import Database

from syncengine.errors import (
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreLocked,
    UsageError,
)
from syncengine.paths import make_private_dirs
from syncengine.store.schema import MIGRATIONS, SCHEMA_NAMES

__all__ = ["StoreDB", "make_folders", "map_sqlite_error", "move_aside", "not_text", "secure_file"]

DEFAULT_BUSY_TIMEOUT_S = 5.0


def make_folders(folder: Path) -> None:
    """Create ``folder`` and each missing parent with mode 0700 (see
    :func:`syncengine.paths.make_private_dirs`); folders that exist are left as they are."""
    make_private_dirs(folder)


def secure_file(path: Path) -> None:
    """Create ``path`` (mode 0600) and its missing folders (0700); drop group and other
    permissions from the database, -wal and -shm files.

    Only bits are removed, never added: a file its owner made read-only (0444) becomes 0400,
    not 0600.
    """
    make_folders(path.parent)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(p, mode & 0o700)


def move_aside(path: Path) -> Path:
    """Rename a damaged database (and its -wal/-shm) out of the way. Never deletes anything."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{target}{suffix}"))
    return target


_CORRUPT_MARKERS = ("malformed", "not a database", "file is encrypted", "corrupt")


def not_text(exc: UnicodeEncodeError) -> UsageError:
    """A string the caller passed cannot be stored: SQLite needs valid UTF-8, and a lone
    surrogate (``"\\udcff"``) has no UTF-8 form. The caller's mistake, not the store's."""
    return UsageError(f"not valid text (a lone surrogate at position {exc.start})")


def map_sqlite_error(exc: sqlite3.Error, path: str) -> StoreError:
    """Translate a sqlite3 error into the store's typed exceptions."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreLocked(f"database is locked by another process: {path}")
    if "full" in text:
        return StoreFull(f"no space left for the database: {path}")
    if any(marker in text for marker in _CORRUPT_MARKERS):
        return StoreCorrupt(f"the database file is damaged: {path} ({exc})", path=path)
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreError(f"constraint failed: {exc}")
    return StoreError(f"database error: {exc}")


class StoreDB:
    """One connection to the store file, with safe write transactions.

    Every method that touches SQLite is serialized by a lock, so one ``StoreDB`` may be shared
    by threads (the blocking wrapper runs the engine on a background loop).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    ):
        self.path = Path(path)
        self.lock = threading.RLock()
        secure_file(self.path)
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:  # pragma: no cover - connect itself rarely fails
            raise map_sqlite_error(exc, str(self.path)) from exc
        self.conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - only on odd filesystems
                raise StoreError(f"could not switch {self.path} to WAL (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = OFF")
            self.db = Database(conn, execute_plugins=False)
            self._migrate()
        except sqlite3.Error as exc:
            conn.close()
            raise map_sqlite_error(exc, str(self.path)) from exc
        except BaseException:
            conn.close()
            raise
        secure_file(self.path)  # -wal and -shm now exist: make sure of their modes too

    def _migrate(self) -> None:
        # Look first, without the write lock: a store that is up to date (every open but the
        # first after an upgrade) must open while another process writes (G6: the CLI reads
        # beside the daemon), and a newer schema is refused without any write attempted.
        with self.read():
            applied = self._applied()
        if len(applied) == len(SCHEMA_NAMES):
            return
        with self.write():
            MIGRATIONS.ensure_migrations_table(self.db)
            self._applied()  # again, under the lock: another process may have migrated
            MIGRATIONS.apply(self.db)

    def _applied(self) -> list[str]:
        """Names of the applied migrations; SchemaTooNew if one is unknown to this version."""
        applied = [m.name for m in MIGRATIONS.applied(self.db)]
        unknown = [name for name in applied if name not in SCHEMA_NAMES]
        if unknown:
            raise SchemaTooNew(
                f"{self.path} was written by a newer syncengine (schema {unknown[-1]}); "
                "upgrade syncengine to open it"
            )
        return applied

    @property
    def schema(self) -> list[str]:
        """Names of the migrations applied to this file."""
        with self.lock:
            return [m.name for m in MIGRATIONS.applied(self.db)]

    @contextlib.contextmanager
    def write(self, *, replayable: bool = False) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.

        Args:
            replayable: the transaction only records what the server holds and will send
                again (a pulled page with its cursor): it commits with ``synchronous=NORMAL``
                (no fsync of the WAL at this COMMIT; see docs/store.md, G3). Everything else
                commits with ``FULL``.
        """
        with self.lock:
            conn = self.conn
            try:
                if replayable:
                    conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._full(conn, replayable)
                raise map_sqlite_error(exc, str(self.path)) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise map_sqlite_error(exc, str(self.path)) from exc
            except UnicodeEncodeError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise not_text(exc) from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._full(conn, replayable)

    @staticmethod
    def _full(conn: sqlite3.Connection, replayable: bool) -> None:
        if replayable:
            # Back to FULL before anything else can write on this connection (the lock is
            # still held): a user's send must never commit without its fsync (G1).
            conn.execute("PRAGMA synchronous = FULL")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read: a consistent snapshot for the statements run inside it."""
        with self.lock:
            conn = self.conn
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, str(self.path)) from exc
            except UnicodeEncodeError as exc:
                raise not_text(exc) from exc

    def integrity_check(self, *, quick: bool = False) -> str:
        """``PRAGMA integrity_check`` (or ``quick_check``): ``"ok"`` for a healthy file.

        Args:
            quick: ``PRAGMA quick_check``: every page and b-tree checked, but not that each
                index matches its table (the slow part, which grows with every index).
        """
        pragma = "quick_check" if quick else "integrity_check"
        with self.lock:
            try:
                rows = self.conn.execute(f"PRAGMA {pragma}").fetchall()
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, str(self.path)) from exc
        return "\n".join(str(r[0]) for r in rows)

    def checkpoint(self) -> None:
        """Fold the WAL back into the main file (``wal_checkpoint(TRUNCATE)``)."""
        with self.lock:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise map_sqlite_error(exc, str(self.path)) from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()
