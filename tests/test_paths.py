"""Folder creation (syncengine.paths.make_private_dirs): every folder made is 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from syncengine.local.lock import StoreLock
from syncengine.paths import make_private_dirs
from syncengine.server.storage import Storage


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _under_umask_000(func):  # type: ignore[no-untyped-def]
    old = os.umask(0)
    try:
        return func()
    finally:
        os.umask(old)


def test_every_missing_folder_is_made_0700_under_umask_000(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert _under_umask_000(lambda: make_private_dirs(target)) == target
    assert [_mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", target)] == [0o700] * 3


def test_an_existing_folder_is_left_as_it_is(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o755)
    _under_umask_000(lambda: make_private_dirs(mine / "new"))
    assert (_mode(mine), _mode(mine / "new")) == (0o755, 0o700)
    make_private_dirs(mine / "new")  # idempotent
    assert _mode(mine / "new") == 0o700


def test_the_server_data_folder_and_the_lock_folder_are_0700(tmp_path: Path) -> None:
    data = tmp_path / "srv" / "data"

    def open_storage() -> None:
        Storage(data / "server.sqlite3").close()

    _under_umask_000(open_storage)
    assert (_mode(tmp_path / "srv"), _mode(data)) == (0o700, 0o700)

    lock = StoreLock(tmp_path / "x" / "y" / "store.db")
    _under_umask_000(lock.acquire)
    try:
        assert (_mode(tmp_path / "x"), _mode(tmp_path / "x" / "y")) == (0o700, 0o700)
    finally:
        lock.release()
