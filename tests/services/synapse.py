"""A throw-away Synapse homeserver for the tests, on 127.0.0.1.

Synapse is installed from the package index into a virtual environment of its own, cached
outside the project's (``$SYNCENGINE_TEST_CACHE`` or the user's cache folder), so the project's
dependencies never meet Synapse's. :func:`start_synapse` generates a config into a temporary
folder, overrides it for tests (a loopback client listener on a free port, no federation, no
key servers, open registration, fast bcrypt, no sync response cache, rate limits raised),
starts the server and returns a :class:`SynapseServer`, stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx

__all__ = [
    "SYNAPSE_VERSION",
    "SynapseInstallError",
    "SynapseServer",
    "ensure_synapse",
    "start_synapse",
    "synapse_server",
]

SYNAPSE_VERSION = "1.163.2"
_UNLIMITED = "{per_second: 10000, burst_count: 100000}"
_OVERRIDES = f"""
listeners:
  - port: @PORT@
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources: [{{names: [client], compress: false}}]
trusted_key_servers: []
suppress_key_server_warning: true
report_stats: false
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
presence: {{enabled: true}}
caches: {{sync_response_cache_duration: 0}}
rc_message: {_UNLIMITED}
rc_registration: {_UNLIMITED}
rc_login: {{address: {_UNLIMITED}, account: {_UNLIMITED}, failed_attempts: {_UNLIMITED}}}
rc_joins: {{local: {_UNLIMITED}, remote: {_UNLIMITED}}}
rc_joins_per_room: {_UNLIMITED}
rc_invites: {{per_room: {_UNLIMITED}, per_user: {_UNLIMITED}, per_issuer: {_UNLIMITED}}}
rc_room_creation: {_UNLIMITED}
rc_presence: {{per_user: {_UNLIMITED}}}
rc_admin_redaction: {_UNLIMITED}
"""


def _cache_dir() -> Path:
    base = os.environ.get("SYNCENGINE_TEST_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "syncengine-tests"


class SynapseInstallError(RuntimeError):
    """pip could not install Synapse; ``offline`` when it could not reach the package index."""

    def __init__(self, message: str, *, offline: bool) -> None:
        super().__init__(message)
        self.offline = offline


#: What pip prints when the package index cannot be reached (no network, no proxy, no DNS).
_OFFLINE_SIGNS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "No matching distribution found",
    "ProxyError",
)


def ensure_synapse() -> Path:
    """The python of a virtual environment with Synapse installed (installed on first use,
    about 35 s; later calls reuse it).

    Raises:
        SynapseInstallError: pip failed (``offline`` says whether for lack of network).
    """
    venv = _cache_dir() / f"synapse-{SYNAPSE_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"matrix-synapse=={SYNAPSE_VERSION}"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        output = done.stdout + done.stderr
        offline = any(sign in output for sign in _OFFLINE_SIGNS)
        raise SynapseInstallError(
            f"pip install matrix-synapse failed:\n{output[-3000:]}", offline=offline
        )
    marker.write_text(SYNAPSE_VERSION)
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class SynapseServer:
    """One running Synapse.

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        server_name: the homeserver's name (user ids end in ``:server_name``).
        process: the Synapse process (stopped by its pid).
    """

    url: str
    server_name: str
    process: subprocess.Popen[bytes]
    python: Path
    folder: Path
    port: int

    def stop(self) -> None:
        """SIGTERM by pid; SIGKILL after 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data."""
        self.stop()
        self.process = _launch(self.python, self.folder)
        _wait_ready(self)


def _launch(python: Path, folder: Path) -> subprocess.Popen[bytes]:
    log = open(folder / "synapse.out", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [
                str(python),
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(folder / "homeserver.yaml"),
                "-c",
                str(folder / "overrides.yaml"),
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def _wait_ready(server: SynapseServer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = (server.folder / "synapse.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"synapse exited:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/_matrix/client/versions", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"synapse did not answer within {timeout} s")


def start_synapse(folder: Path, *, server_name: str = "localhost") -> SynapseServer:
    """Generate a config into ``folder`` and start Synapse on 127.0.0.1 with a free port."""
    python = ensure_synapse()
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            server_name,
            "--config-path",
            str(folder / "homeserver.yaml"),
            "--data-directory",
            str(folder),
            "--generate-config",
            "--report-stats=no",
        ],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    (folder / "overrides.yaml").write_text(_OVERRIDES.replace("@PORT@", str(port)))
    server = SynapseServer(
        url=f"http://127.0.0.1:{port}",
        server_name=server_name,
        process=_launch(python, folder),
        python=python,
        folder=folder,
        port=port,
    )
    _wait_ready(server)
    return server


@contextlib.contextmanager
def synapse_server(folder: Path) -> Iterator[SynapseServer]:
    """:func:`start_synapse` as a context manager that always stops the server."""
    server = start_synapse(folder)
    try:
        yield server
    finally:
        server.stop()
