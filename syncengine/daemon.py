"""The background daemon: one connected engine per store, housekeeping jobs, signals, readiness.

``syncengine daemon`` runs in the foreground (the right shape for systemd, launchd or a
container). It holds the store's single-writer lock (G6), opens a connected
:class:`~syncengine.engine.SyncEngine` (live channel plus sync loop) and runs a few
APScheduler jobs beside it:

========================  ===================================================================
job                       why
========================  ===================================================================
``safety-pull``           a pull now and then while LIVE, in case a live event was lost
``outbox-retry``          push due work at once (the engine's loop also looks every 0.25 s)
``typing-expiry``         delete expired typing rows (pitfall 7: an indicator must not stick)
``wal-checkpoint``        fold the WAL back into the database (pitfall 11: store growth)
``prune-sent``            delete old SENT outbox rows (pitfall 11)
``token-watch``           restart the engine when ``syncengine login``/``logout`` changed the
                          token, so a daemon stuck on refused credentials recovers by itself
========================  ===================================================================

Every job runs with ``max_instances=1, coalesce=True``: a slow run is never stacked.

Exit codes (``sysexits.h``, so a service manager can tell them apart):

- 0: stopped by SIGTERM or SIGINT; nothing left SENDING.
- 1: not logged in, or the sync loop stopped for a reason a restart may fix.
- 65 (``EX_DATAERR``): the store is damaged; the file is left untouched.
- 75 (``EX_TEMPFAIL``): another process already syncs this store; its pid is named.

The lock is a ``filelock`` (``flock``) on ``<db>.lock``: the kernel releases it when the
holder dies, even by ``kill -9``, so a stale lock never blocks the next start. The holder's
pid is written to ``<db>.pid`` (the lock file itself is truncated by every process that
tries the lock, so it cannot carry the pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import attrs
import filelock

from syncengine.engine import SyncEngine
from syncengine.errors import (
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreLockHeld,
    SyncEngineError,
    UsageError,
)
from syncengine.events import ConnectionStateChanged
from syncengine.logs import RedactingFilter, install_redaction
from syncengine.models import ConnectionState
from syncengine.paths import lock_path, token_path
from syncengine.store import Store

__all__ = [
    "EX_DATAERR",
    "EX_FAILURE",
    "EX_OK",
    "EX_TEMPFAIL",
    "Daemon",
    "DaemonConfig",
    "StoreLock",
    "daemon_info",
    "engine_options",
    "notify",
    "pid_path",
    "run_daemon",
    "setup_logging",
]

log = logging.getLogger("syncengine.daemon")

EX_OK = 0
EX_FAILURE = 1
EX_DATAERR = 65
EX_TEMPFAIL = 75

#: How long a starting daemon waits for the lock. Not zero: ``syncengine status`` probes the
#: lock for a few microseconds, and a daemon starting at that instant must not give up.
LOCK_WAIT_S = 0.5

#: Grace period for shutting down (the service manager's stop timeout is usually longer).
STOP_TIMEOUT_S = 4.0


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
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


def notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send a systemd notification (``READY=1``, ``STOPPING=1``, ``STATUS=...``).

    Implemented with the socket module (the protocol is one datagram on the unix socket
    named by ``NOTIFY_SOCKET``; a leading ``@`` means the abstract namespace).

    Returns:
        True when a notification was sent, False when no manager listens.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("could not notify the service manager: %s", exc)
        return False
    return True


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald and log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            doc["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str = "info", stream: IO[str] | None = None) -> logging.Handler:
    """Log to ``stream`` (stderr): JSON lines unless it is a terminal; secrets redacted.

    Returns:
        The handler installed on the root logger (remove it to undo).
    """
    install_redaction()
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if is_tty:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (a line per request, per frame) drowns the daemon's own story at INFO.
    if level.lower() != "debug":
        for name in ("httpx", "httpcore", "websockets", "stamina", "apscheduler"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def engine_options(store: Store) -> dict[str, Any]:
    """The connection options recorded by ``syncengine login`` (CA file, insecure)."""
    options: dict[str, Any] = {}
    ca_file = store.get_meta("ca_file")
    if ca_file:
        options["ca_file"] = ca_file
    if store.get_meta("allow_insecure") == "1":
        options["allow_insecure"] = True
    return options


@attrs.define(kw_only=True)
class DaemonConfig:
    """What the daemon does and how often. Durations in seconds.

    Attributes:
        db_path: the store to sync.
        safety_pull_s: a pull this often while LIVE (a safety net behind the live channel).
        retry_s: how often due outbox work is pushed by the scheduler.
        typing_expiry_s: how often expired typing rows are deleted.
        checkpoint_s: how often the WAL is checkpointed.
        prune_s: how often old SENT operations are pruned.
        prune_after_s: age after which a SENT operation is pruned.
        token_watch_s: how often the token file is checked for a new login or a logout.
        engine: extra :class:`SyncEngine` keyword arguments (tests make reconnects fast).
    """

    db_path: Path = attrs.field(converter=Path)
    safety_pull_s: float = 60.0
    retry_s: float = 5.0
    typing_expiry_s: float = 2.0
    checkpoint_s: float = 300.0
    prune_s: float = 3600.0
    prune_after_s: float = 7 * 86400.0
    token_watch_s: float = 2.0
    engine: dict[str, Any] = attrs.field(factory=dict)


def _token_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Daemon:
    """One run of the daemon. Use :func:`run_daemon` unless embedding it in another program.

    Args:
        config: what to sync and how often.
    """

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.engine: SyncEngine | None = None
        self._lock = StoreLock(config.db_path)
        self._stop = asyncio.Event()
        #: Signals caught by the caller before the event loop existed (see run_daemon).
        self.early_signals: list[int] = []
        self._exit_code = EX_OK
        self._token_sig: tuple[int, int, int] | None = None
        self._restarting = False

    def request_stop(self, code: int = EX_OK) -> None:
        """Ask the daemon to stop and exit with ``code`` (the first request wins)."""
        if not self._stop.is_set():
            self._exit_code = code
            self._stop.set()

    async def run(self) -> int:
        """Run until stopped. Returns the process exit code."""
        db = self.config.db_path
        if not db.exists():
            # Nothing to sync, and no reason to leave a lock file where no store is.
            log.error("not logged in: no store at %s; run 'syncengine login' first", db)
            return EX_FAILURE
        # Signals are handled from the first moment: a SIGTERM during start-up (opening and
        # checking the store can take a while) must still end in a clean exit 0.
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Loops without signal support (Windows) or a loop off the main thread (tests
            # that run the daemon in-process) raise these: they then keep default handling.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        if self.early_signals:  # received before the loop's handlers took over
            self.request_stop(EX_OK)
        if self._stop.is_set():
            return self._exit_code
        try:
            try:
                self._lock.acquire()
            except StoreLockHeld as exc:
                log.error("%s: not starting a second daemon", exc)
                return EX_TEMPFAIL
            try:
                return await self._run_locked(db)
            finally:
                self._lock.release()
        finally:
            for installed_sig in installed:
                loop.remove_signal_handler(installed_sig)

    async def _run_locked(self, db: Path) -> int:
        try:
            options, account = self._check_store(db)
        except (StoreCorrupt, SchemaTooNew) as exc:
            log.error("%s; the file was left untouched", _one_line(exc))
            return EX_DATAERR
        except StoreError as exc:
            log.error("cannot open the store: %s", _one_line(exc))
            return EX_FAILURE
        if not account.get("user") or not account.get("server"):
            log.error("not logged in: run 'syncengine --db %s login SERVER_URL USER' first", db)
            return EX_FAILURE
        if _token_signature(token_path(db)) is None:
            log.error(
                "no token for %s (logged out): run 'syncengine --db %s login %s %s' first",
                account["user"],
                db,
                account["server"],
                account["user"],
            )
            return EX_FAILURE

        if self._stop.is_set():
            # SIGTERM arrived while starting up: stop cleanly before connecting.
            return self._exit_code
        scheduler = None
        try:
            await self._start_engine(options)
            log.info(
                "daemon started: pid %d, store %s, %s on %s",
                os.getpid(),
                db,
                account["user"],
                account["server"],
            )
            scheduler = self._start_scheduler()
            status = f"syncing {account['user']} on {account['server']}"
            notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")
            await self._stop.wait()
        except (StoreCorrupt, SchemaTooNew) as exc:
            log.error("%s; the file was left untouched", _one_line(exc))
            self._exit_code = EX_DATAERR
        finally:
            notify("STOPPING=1")
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            await self._close_engine()
        log.info("daemon stopped (exit %d)", self._exit_code)
        return self._exit_code

    def _check_store(self, db: Path) -> tuple[dict[str, Any], dict[str, str | None]]:
        """Open the store once to check it and read the account, then close it again."""
        store = Store(db)
        try:
            result = store.integrity_check()
            if result != "ok":
                raise StoreCorrupt(
                    f"the database file is damaged: {db} ({result.splitlines()[0]})", path=str(db)
                )
            # We hold the single-writer lock: a SENDING row is a push cut short by a process
            # that died (kill -9, power loss). Replay it now rather than after its lease.
            recovered = store.recover_sending()
            if recovered:
                log.info("recovered %d operation(s) left sending by a previous run", recovered)
            return engine_options(store), store.account()
        finally:
            store.close()

    def _on_signal(self, sig: int) -> None:
        log.info("received %s: stopping", signal.Signals(sig).name)
        self.request_stop(EX_OK)

    async def _start_engine(self, options: dict[str, Any]) -> None:
        engine = SyncEngine(self.config.db_path, **{**options, **self.config.engine})
        engine.on(ConnectionStateChanged, self._on_state)
        self._token_sig = _token_signature(token_path(self.config.db_path))
        await engine.open()
        self.engine = engine

    async def _close_engine(self) -> None:
        engine, self.engine = self.engine, None
        if engine is None:
            return
        try:
            await asyncio.wait_for(engine.close(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("the engine did not stop within %.0f s", STOP_TIMEOUT_S)
            self._exit_code = self._exit_code or EX_FAILURE

    def _on_state(self, change: ConnectionStateChanged) -> None:
        if change.new is not ConnectionState.FAILED or self._restarting:
            return
        # The engine reports why its loop stopped only through the transition's reason.
        if change.reason == "store corrupt":
            log.error("the store is damaged: stopping; the file was left untouched")
            self.request_stop(EX_DATAERR)
        elif change.reason.startswith("credentials refused"):
            log.error(
                "the server refused the credentials: run 'syncengine login'; the daemon "
                "resumes by itself when the token changes"
            )
        else:
            log.error("the sync loop stopped: %s", change.reason)
            self.request_stop(EX_FAILURE)

    # --- jobs -------------------------------------------------------------------------------

    def _start_scheduler(self) -> Any:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        cfg = self.config
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        jobs: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
            ("safety-pull", self._job_safety_pull, cfg.safety_pull_s),
            ("outbox-retry", self._job_outbox_retry, cfg.retry_s),
            ("typing-expiry", self._job_typing_expiry, cfg.typing_expiry_s),
            ("wal-checkpoint", self._job_checkpoint, cfg.checkpoint_s),
            ("prune-sent", self._job_prune_sent, cfg.prune_s),
            ("token-watch", self._job_token_watch, cfg.token_watch_s),
        ]
        for name, func, seconds in jobs:
            scheduler.add_job(
                self._guarded(name, func),
                "interval",
                seconds=seconds,
                id=name,
                name=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(seconds)),
            )
        scheduler.start()
        return scheduler

    def _guarded(self, name: str, func: Callable[[], Awaitable[None]]) -> Callable[[], Any]:
        async def job() -> None:
            if self.engine is None or self._stop.is_set() or self._restarting:
                return
            try:
                await func()
            except (StoreCorrupt, SchemaTooNew) as exc:
                log.error("%s; stopping", _one_line(exc))
                self.request_stop(EX_DATAERR)
            except SyncEngineError as exc:
                # Transient by nature (server away, store busy): the next run tries again.
                log.info("job %s: %s", name, _one_line(exc))
            except Exception:
                log.exception("job %s failed", name)

        job.__name__ = f"job_{name.replace('-', '_')}"
        return job

    def _live_engine(self) -> SyncEngine | None:
        engine = self.engine
        if engine is None or engine.state is not ConnectionState.LIVE:
            return None
        return engine

    async def _job_safety_pull(self) -> None:
        engine = self._live_engine()
        if engine is not None:
            await engine.sync_once()

    async def _job_outbox_retry(self) -> None:
        # Nothing is requeued here (a FAILED item waits for 'syncengine retry'); due PENDING
        # items are pushed now instead of waiting for the loop's next look.
        engine = self._live_engine()
        if engine is not None and engine.store.due_count(time.time()):
            await engine.sync_once()

    async def _job_typing_expiry(self) -> None:
        if self.engine is not None:
            self.engine.store.prune_typing()

    async def _job_checkpoint(self) -> None:
        if self.engine is not None:
            self.engine.store.checkpoint()

    async def _job_prune_sent(self) -> None:
        if self.engine is not None:
            pruned = self.engine.store.prune_sent(self.config.prune_after_s)
            if pruned:
                log.info("pruned %d sent operations", pruned)

    async def _job_token_watch(self) -> None:
        sig = _token_signature(token_path(self.config.db_path))
        if sig == self._token_sig:
            return
        log.info(
            "the token changed (%s): restarting the engine",
            "logged out" if sig is None else "login",
        )
        self._restarting = True
        try:
            engine, self.engine = self.engine, None
            if engine is not None:
                await engine.close()
            store = Store(self.config.db_path)
            try:
                options = engine_options(store)
            finally:
                store.close()
            await self._start_engine(options)
        finally:
            self._restarting = False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_daemon(config: DaemonConfig, *, early_signals: list[int] | None = None) -> int:
    """Run a daemon on a new event loop until SIGTERM/SIGINT. Returns the exit code.

    ``early_signals`` collects signals received before the event loop existed (the caller's
    own handler appends to it); any of them stops the daemon cleanly as soon as it starts.
    """
    daemon = Daemon(config)
    daemon.early_signals = early_signals if early_signals is not None else []
    try:
        return asyncio.run(daemon.run())
    except UsageError as exc:
        log.error("%s", _one_line(exc))
        return EX_FAILURE
