"""The background daemon: lifecycle and housekeeping around one connected engine per store.

``syncengine daemon`` runs in the foreground (the right shape for systemd, launchd or a
container). It holds the store's single-writer lock (G6, :mod:`syncengine.local.lock`), opens
a connected :class:`~syncengine.SyncEngine` (live channel plus sync loop) and runs a few
housekeeping jobs beside it. Syncing is the engine's alone, with one owner per timer: the
engine pulls every ``safety_pull_s`` while live (set from ``--safety-pull``) and pushes due
outbox work from its own loop; the daemon schedules no pull or push of its own.

========================  ===================================================================
job                       why
========================  ===================================================================
``typing-expiry``         delete expired typing rows: a stop event lost in a disconnect must
                          not leave an indicator on for ever
``wal-checkpoint``        fold the WAL back into the database, so the store does not grow
                          without bound
``prune-sent``            delete old SENT outbox rows, for the same reason
``token-watch``           restart the engine when ``syncengine login``/``logout`` changed the
                          token, so a daemon stuck on refused credentials recovers by itself
========================  ===================================================================

Every job runs with ``max_instances=1, coalesce=True``: a slow run is never stacked.

Exit codes (``sysexits.h``, so a service manager can tell them apart), chosen from the type
of the failure (:data:`EXIT_CODES`), never from its wording:

- 0: stopped by SIGTERM or SIGINT; nothing left SENDING.
- 1: not logged in (``NotLoggedIn``), or the sync loop stopped for a reason a restart may fix.
- 65 (``EX_DATAERR``): the store is damaged (``StoreCorrupt``, ``SchemaTooNew``); the file
  is left untouched.
- 75 (``EX_TEMPFAIL``): another process already syncs this store (``StoreLockHeld``); its
  pid is named.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from syncengine import SyncEngine
from syncengine.errors import (
    AuthFailed,
    NotLoggedIn,
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreLockHeld,
    SyncEngineError,
)
from syncengine.events import ConnectionStateChanged
from syncengine.local.account import engine_options
from syncengine.local.lock import LOCK_WAIT_S, StoreLock, daemon_info, pid_path
from syncengine.logs import RedactingFilter, install_redaction
from syncengine.models import ConnectionState
from syncengine.paths import cli_command, token_path
from syncengine.sdnotify import notify
from syncengine.store import Store
from syncengine.store.store import quick_check

__all__ = [
    "EXIT_CODES",
    "EX_DATAERR",
    "EX_FAILURE",
    "EX_OK",
    "EX_TEMPFAIL",
    "LOCK_WAIT_S",
    "Daemon",
    "DaemonConfig",
    "StoreLock",
    "daemon_info",
    "engine_options",
    "exit_code_for",
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

#: Grace period for shutting down (the service manager's stop timeout is usually longer).
STOP_TIMEOUT_S = 4.0

#: The exit status and log line of each typed failure, most specific first. A failure that
#: is not a ``SyncEngineError`` is a bug and exits 1 as well.
EXIT_CODES: tuple[tuple[type[SyncEngineError], int, str], ...] = (
    (StoreCorrupt, EX_DATAERR, "{}; the file was left untouched"),
    (SchemaTooNew, EX_DATAERR, "{}; the file was left untouched"),
    (StoreLockHeld, EX_TEMPFAIL, "{}: not starting a second daemon"),
    (NotLoggedIn, EX_FAILURE, "{}"),
    (StoreError, EX_FAILURE, "cannot open the store: {}"),
    (SyncEngineError, EX_FAILURE, "{}"),
)


def exit_code_for(exc: BaseException) -> int:
    """The daemon's exit status for a failure, from its type (see :data:`EXIT_CODES`)."""
    for kind, code, _line in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EX_FAILURE


def _failure_line(exc: BaseException) -> str:
    for kind, _code, line in EXIT_CODES:
        if isinstance(exc, kind):
            return line.format(_one_line(exc))
    return _one_line(exc)


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
    install_retry_logging()
    return handler


def install_retry_logging() -> None:
    """Log each scheduled retry at INFO with its reason and delay (stamina's instrumentation).

    stamina's default hook logs ``stamina.retry_scheduled`` as a WARNING without the cause; a
    retry is the engine working as designed (the server is away, work stays queued), so it
    is replaced by one INFO line in the daemon's words.
    """
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks([_log_retry])


def _log_retry(details: Any) -> None:
    """One INFO line for a retry stamina scheduled: attempt, delay, reason."""
    log.info(
        "retrying in %.1f s (attempt %d): %s",
        details.wait_for,
        details.retry_num,
        _one_line(details.caused_by),
        extra={"retry_in_s": round(details.wait_for, 3), "attempt": details.retry_num},
    )


@attrs.define(kw_only=True)
class DaemonConfig:
    """What the daemon does and how often. Durations in seconds.

    Attributes:
        db_path: the store to sync.
        safety_pull_s: the engine pulls this often while LIVE (a safety net behind the live
            channel); passed to the engine as its ``safety_pull_s``, the only such timer.
        retry_s: kept for compatibility and unused: the engine's own loop pushes due outbox
            work (it looks every 0.25 s), so the daemon no longer runs a second push timer.
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

    def engine_kwargs(self, options: dict[str, Any]) -> dict[str, Any]:
        """The engine's keyword arguments: login options, then the daemon's timers, then
        :attr:`engine` overrides."""
        return {**options, "safety_pull_s": self.safety_pull_s, **self.engine}


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
        """Run until stopped. Returns the process exit code (see :data:`EXIT_CODES`)."""
        db = self.config.db_path
        try:
            if not db.exists():
                # Nothing to sync, and no reason to leave a lock file where no store is.
                raise NotLoggedIn(
                    f"not logged in: no store at {db}; run "
                    f"'{cli_command(db, 'login', 'SERVER_URL', 'USER')}' first"
                )
            # Signals are handled from the first moment: a SIGTERM during start-up (opening
            # and checking the store can take a while) must still end in a clean exit 0.
            with self._signal_handlers():
                if self.early_signals:  # received before the loop's handlers took over
                    self.request_stop(EX_OK)
                if self._stop.is_set():
                    return self._exit_code
                self._lock.acquire()
                try:
                    return await self._run_locked(db)
                finally:
                    self._lock.release()
        except SyncEngineError as exc:
            log.error("%s", _failure_line(exc))
            return exit_code_for(exc)

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Loops without signal support (Windows) or a loop off the main thread (tests
            # that run the daemon in-process) raise these: they then keep default handling.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            yield
        finally:
            for installed_sig in installed:
                loop.remove_signal_handler(installed_sig)

    async def _run_locked(self, db: Path) -> int:
        options, account = self._check_store(db)
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
        except SyncEngineError as exc:
            log.error("%s", _failure_line(exc))
            self._exit_code = exit_code_for(exc)
        finally:
            notify("STOPPING=1")
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            await self._close_engine()
        log.info("daemon stopped (exit %d)", self._exit_code)
        return self._exit_code

    def _check_store(self, db: Path) -> tuple[dict[str, Any], dict[str, str | None]]:
        """Open the store once to check it and read the account, then close it again.

        Raises:
            StoreCorrupt, SchemaTooNew, StoreError: the store cannot be used.
            NotLoggedIn: no account, or no token (logged out).
        """
        store = Store(db)
        try:
            # quick_check, not integrity_check, at every start: it reads every page and
            # checks every b-tree, which is where a torn write or a bad disk shows, but
            # skips matching each index against its table, which took 0.2 s at 200,000
            # messages and grows with the store (docs/store.md).
            result = quick_check(store)
            if result != "ok":
                raise StoreCorrupt(
                    f"the database file is damaged: {db} ({result.splitlines()[0]})", path=str(db)
                )
            account = store.account()
            _require_account(db, account)
            # We hold the single-writer lock: a SENDING row is a push cut short by a process
            # that died (kill -9, power loss). Replay it now rather than after its lease.
            recovered = store.recover_sending()
            if recovered:
                log.info("recovered %d operation(s) left sending by a previous run", recovered)
            return engine_options(store), account
        finally:
            store.close()

    def _on_signal(self, sig: int) -> None:
        log.info("received %s: stopping", signal.Signals(sig).name)
        self.request_stop(EX_OK)

    async def _start_engine(self, options: dict[str, Any]) -> None:
        engine = SyncEngine(self.config.db_path, **self.config.engine_kwargs(options))
        engine.on(ConnectionStateChanged, lambda change: self._on_state(engine, change))
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

    def _on_state(self, engine: SyncEngine, change: ConnectionStateChanged) -> None:
        if change.new is not ConnectionState.FAILED or self._restarting:
            return
        # The engine names why its loop stopped with a typed error; its wording is for people.
        failure = engine.failure
        if isinstance(failure, AuthFailed):
            account = _account_of(self.config.db_path)
            hint = cli_command(
                self.config.db_path,
                "login",
                account.get("server") or "SERVER_URL",
                account.get("user") or "USER",
            )
            log.error(
                f"the server refused the credentials: run '{hint}'; the daemon "
                "resumes by itself when the token changes"
            )
            return
        code = exit_code_for(failure) if failure is not None else EX_FAILURE
        if code == EX_DATAERR:
            log.error("the store is damaged: stopping; the file was left untouched")
        else:
            log.error("the sync loop stopped: %s", change.reason)
        self.request_stop(code)

    # --- housekeeping jobs ------------------------------------------------------------------

    def _start_scheduler(self) -> Any:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        cfg = self.config
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        jobs: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
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
            except SyncEngineError as exc:
                if exit_code_for(exc) == EX_DATAERR:
                    log.error("%s; stopping", _one_line(exc))
                    self.request_stop(EX_DATAERR)
                else:
                    # Transient by nature (server away, store busy): the next run tries again.
                    log.info("job %s: %s", name, _one_line(exc))
            except Exception:
                log.exception("job %s failed", name)

        job.__name__ = f"job_{name.replace('-', '_')}"
        return job

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


def _account_of(db: Path) -> dict[str, str | None]:
    """The store's account for a hint (empty when it cannot be read)."""
    try:
        with Store(db) as store:
            return dict(store.account())
    except (SyncEngineError, OSError):
        return {}


def _require_account(db: Path, account: dict[str, str | None]) -> None:
    """Raise NotLoggedIn unless the store has an account and a token (the daemon's wording)."""
    if not account.get("user") or not account.get("server"):
        hint = cli_command(db, "login", "SERVER_URL", "USER")
        raise NotLoggedIn(f"not logged in: run '{hint}' first")
    if _token_signature(token_path(db)) is None:
        hint = cli_command(db, "login", account["server"] or "", account["user"] or "")
        raise NotLoggedIn(f"no token for {account['user']} (logged out): run '{hint}' first")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run_daemon(config: DaemonConfig, *, early_signals: list[int] | None = None) -> int:
    """Run a daemon on a new event loop until SIGTERM/SIGINT. Returns the exit code.

    ``early_signals`` collects signals received before the event loop existed (the caller's
    own handler appends to it); any of them stops the daemon cleanly as soon as it starts.
    """
    daemon = Daemon(config)
    daemon.early_signals = early_signals if early_signals is not None else []
    return asyncio.run(daemon.run())
