"""The single-writer lock of a store (guarantee G6): one syncing process per store.

The lock is a ``filelock`` (``flock``) on ``<db>.lock``: the kernel releases it when the
holder dies, even by ``kill -9``, so a stale lock never blocks the next start. The holder's
pid is written to ``<db>.pid`` (the lock file itself is truncated by every process that tries
the lock, so it cannot carry the pid). The daemon holds it for its lifetime; the CLI holds it
only while it syncs by itself; readers never need it (SQLite's WAL lets them read).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import filelock

from syncengine.errors import StoreLockHeld
from syncengine.paths import lock_path, make_private_dirs

__all__ = ["LOCK_WAIT_S", "StoreLock", "daemon_info", "pid_path"]

#: How long a starting daemon waits for the lock. Not zero: ``syncengine status`` probes the
#: lock for a few microseconds, and a daemon starting at that instant must not give up.
LOCK_WAIT_S = 0.5


def pid_path(db_path: str | os.PathLike[str]) -> Path:
    """The file beside a store where the lock holder writes its pid."""
    return Path(f"{db_path}.pid")


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
