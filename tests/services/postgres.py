"""A throw-away PostgreSQL server for the tests, started from the machine's own binaries.

``start_postgres(tmp)`` runs ``initdb`` into a temporary folder and starts ``postgres`` on
127.0.0.1 with a free port (trust authentication: loopback only, data thrown away), and
returns a :class:`PostgresServer` that is stopped by its pid. As root, PostgreSQL refuses to
run, so the server runs as the ``postgres`` user (the folder is handed to that user first).

No package is installed by this module: the server binaries come with the machine image
(``/usr/lib/postgresql/*/bin``). Where none exist, :func:`find_bin_dir` returns None and the
tests that need PostgreSQL skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

__all__ = ["PostgresServer", "find_bin_dir", "postgres_server", "start_postgres"]

_SEARCH = ("/usr/lib/postgresql/*/bin",)


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL ``bin`` folder on this machine, or None."""
    candidates = []
    for pattern in _SEARCH:
        for path in Path("/").glob(pattern.lstrip("/")):
            if (path / "initdb").exists() and (path / "postgres").exists():
                candidates.append(path)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)

    def version(p: Path) -> tuple[int, ...]:
        name = p.parent.name
        return tuple(int(x) for x in name.split(".") if x.isdigit()) or (0,)

    return max(candidates, key=version) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[Callable[[], None] | None, int | None, int | None]:
    """A preexec function that drops to the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return None, None, None
    entry = pwd.getpwnam("postgres")

    def drop() -> None:
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return drop, entry.pw_uid, entry.pw_gid


@attrs.define
class PostgresServer:
    """One running PostgreSQL server.

    Attributes:
        url: ``postgresql://postgres@127.0.0.1:PORT/postgres``.
        port: its TCP port on 127.0.0.1.
        process: the ``postgres`` process (stopped by its pid).
    """

    url: str
    port: int
    process: subprocess.Popen[bytes]
    bin_dir: Path
    data_dir: Path

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        subprocess.run(
            [str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", name],
            check=True, capture_output=True, timeout=30,
        )
        return self.database_url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by pid; SIGKILL after 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_postgres(
    base: Path, *, bin_dir: Path | None = None, durable: bool = False
) -> PostgresServer:
    """initdb into ``base`` and start the server on 127.0.0.1; raises RuntimeError if it
    does not accept connections within 30 s.

    Args:
        durable: keep PostgreSQL's defaults (``fsync``, ``synchronous_commit``, full page
            writes on), as a benchmark comparing it with SQLite's ``synchronous=FULL``
            must; the tests leave it off (faster, and their data is thrown away).
    """
    bin_dir = bin_dir or find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries on this machine")
    drop, uid, gid = _as_user()
    base.mkdir(parents=True, exist_ok=True)
    data, sockets = base / "data", base / "sock"
    sockets.mkdir(exist_ok=True)
    if uid is not None and gid is not None:
        for path in (base, sockets):
            os.chown(path, uid, gid)
        os.chmod(base, 0o700)
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-sync", "--no-instructions"],
        check=True, capture_output=True, timeout=120, preexec_fn=drop,
    )
    port = _free_port()
    log = open(base / "postgres.log", "ab")  # noqa: SIM115 - kept open for the server's life
    process = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
         "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
         *([] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                               "-c", "full_page_writes=off"])],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=drop,
    )
    log.close()
    server = PostgresServer(
        url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
        port=port, process=process, bin_dir=bin_dir, data_dir=data,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                "postgres exited: " + (base / "postgres.log").read_text(errors="replace")[-2000:]
            )
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
            capture_output=True, timeout=10,
        )
        if ready.returncode == 0:
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("postgres did not accept connections within 30 s")


@contextlib.contextmanager
def postgres_server(base: Path) -> Iterator[PostgresServer]:
    """:func:`start_postgres` as a context manager that always stops the server."""
    server = start_postgres(base)
    try:
        yield server
    finally:
        server.stop()


def skip_reason() -> str | None:
    """Why PostgreSQL tests cannot run here (None when they can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    if find_bin_dir() is None:
        return "no PostgreSQL server binaries on this machine (initdb, postgres)"
    return None


class PostgresPool:
    """The session's PostgreSQL server, handing out a fresh database per test."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self._count = 0

    def fresh(self) -> str:
        """A new, empty database; returns its URL."""
        self._count += 1
        return self.server.create_database(f"t{os.getpid()}_{self._count}")
