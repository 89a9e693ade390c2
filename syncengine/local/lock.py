"""The single-writer lock of a store (guarantee G6): one syncing process per store.

The lock is a ``filelock`` (``flock``) on ``<db>.lock`` beside the store's real path
(``os.path.realpath``: a store reached through a symlink is the same store): the kernel
releases it when the holder dies, even by ``kill -9``, so a stale lock never blocks the next
start. The holder's pid is written to ``<db>.pid`` (the lock file itself is truncated by
every process that tries the lock, so it cannot carry the pid). The daemon holds it for its
lifetime; the CLI holds it only while it syncs by itself; a syncing ``SyncEngine`` holds it
while open (or shares the one its own process took first, as the daemon and ``follow`` do);
readers never need it (SQLite's WAL lets them read).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import filelock

from syncengine.errors import StoreLockHeld
from syncengine.paths import lock_path, make_private_dirs, real_store_path

__all__ = [
    "LOCK_WAIT_S",
    "EngineClaim",
    "StoreLock",
    "claim_for_engine",
    "daemon_info",
    "held_here",
    "pid_path",
    "release_for_engine",
]

#: The stores whose lock this process holds, by real path: a syncing engine opened by the
#: lock's holder (the daemon, ``follow``) works under it instead of taking it again (an
#: ``flock`` taken twice by one process on two descriptors would refuse itself).
_HELD: set[str] = set()


def held_here(db_path: str | os.PathLike[str]) -> bool:
    """Whether this process holds the store's lock (through any path to it)."""
    return real_store_path(db_path) in _HELD

T = TypeVar("T")

#: How long a starting daemon waits for the lock. Not zero: ``syncengine status`` probes the
#: lock for a few microseconds, and a daemon starting at that instant must not give up.
LOCK_WAIT_S = 0.5


def pid_path(db_path: str | os.PathLike[str]) -> Path:
    """The file beside a store's real path where the lock holder writes its pid."""
    return Path(f"{real_store_path(db_path)}.pid")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class StoreLock:
    """The single-writer lock of one store (guarantee G6).

    Args:
        db_path: the store file; the lock is ``<db>.lock`` and the pid goes to ``<db>.pid``.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)
        self.real = real_store_path(db_path)
        self.path = lock_path(db_path)
        self.pid_file = pid_path(db_path)
        # thread_local=False: the holder may be released from another thread than the one
        # that took it (a CLI command running its engine on a helper thread).
        self._lock = filelock.UnixFileLock(str(self.path), mode=0o600, thread_local=False)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return bool(self._lock.is_locked)

    def acquire(self, timeout: float = LOCK_WAIT_S) -> None:
        """Take the lock and record this process's pid.

        Raises:
            StoreLockHeld: another process holds it (``pid`` names it when known).
        """
        make_private_dirs(self.path.parent)
        try:
            self._lock.acquire(timeout=timeout)
        except filelock.Timeout:
            pid = _read_pid(self.pid_file)
            who = f"another process (pid {pid})" if pid is not None else "another process"
            raise StoreLockHeld(
                f"{who} already syncs {self.db_path} (lock {self.path})", pid=pid
            ) from None
        tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.pid_file)
        _HELD.add(self.real)

    def try_acquire(self) -> bool:
        """Take the lock if it is free at once; False when another process holds it."""
        try:
            self.acquire(timeout=0)
        except StoreLockHeld:
            return False
        return True

    def release(self) -> None:
        """Remove the pid file and release the lock. Idempotent."""
        if not self.held:
            return
        _HELD.discard(self.real)
        with contextlib.suppress(FileNotFoundError):
            if _read_pid(self.pid_file) == os.getpid():
                self.pid_file.unlink()
        self._lock.release(force=True)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def daemon_info(db_path: str | os.PathLike[str]) -> tuple[bool, int | None]:
    """Whether a process holds the store's lock, and its pid.

    The lock is probed without waiting; the probe holds it for a few microseconds at most
    (a daemon starting meanwhile waits :data:`LOCK_WAIT_S` for it).

    Returns:
        ``(running, pid)``; ``pid`` is None when nothing runs or the pid file is unreadable.
    """
    path = lock_path(db_path)
    if not path.exists():
        return False, None
    probe = filelock.UnixFileLock(str(path), mode=0o600, thread_local=False)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True, _read_pid(pid_path(db_path))
    except OSError:
        return False, None
    probe.release(force=True)
    return False, None


#: The stores a syncing engine of this process has open, by real path.
_ENGINES: set[str] = set()


def claim_for_engine(db_path: str | os.PathLike[str]) -> StoreLock | None:
    """Make a syncing engine the store's one writer (G6), before it opens the store.

    The engine takes the store's lock, or works under the lock its own process already holds
    (the daemon and ``follow`` take it, then open their engine); a second syncing engine on
    the same store, in this process or another, is refused.

    Returns:
        The lock taken for the engine (None when it works under its process's lock); give it
        back with :func:`release_for_engine`.

    Raises:
        StoreLockHeld: another process, or another engine of this one, syncs the store.
    """
    real = real_store_path(db_path)
    if real in _ENGINES:
        raise StoreLockHeld(
            f"another engine of this process (pid {os.getpid()}) already syncs {db_path}",
            pid=os.getpid(),
        )
    lock: StoreLock | None = None
    if real not in _HELD:
        lock = StoreLock(db_path)
        lock.acquire()
    _ENGINES.add(real)
    return lock


def release_for_engine(db_path: str | os.PathLike[str], lock: StoreLock | None) -> None:
    """Give back what :func:`claim_for_engine` took. Idempotent."""
    _ENGINES.discard(real_store_path(db_path))
    if lock is not None:
        lock.release()


class EngineClaim:
    """A syncing engine's claim to be its store's one writer (see :func:`claim_for_engine`).

    Args:
        db_path: the store file.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = db_path
        self._lock: StoreLock | None = None
        self.claimed = False

    def take(self) -> None:
        """Claim the store (idempotent).

        Raises:
            StoreLockHeld: another process, or another engine of this one, syncs the store.
        """
        if not self.claimed:
            self._lock = claim_for_engine(self.db_path)
            self.claimed = True

    def open(self, claim: bool, opener: Callable[[], T]) -> T:
        """Claim the store (when ``claim``), then run ``opener``; the claim is given back
        when ``opener`` fails.

        Raises:
            StoreLockHeld: see :meth:`take` (``opener`` is not run).
        """
        if claim:
            self.take()
        try:
            return opener()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give the claim back. Idempotent."""
        if self.claimed:
            self.claimed = False
            release_for_engine(self.db_path, self._lock)
            self._lock = None
