"""A real Synapse for the Matrix transport's tests, and users registered on it.

The ``synapse`` fixture (one per session) installs Synapse into its own cached virtual
environment on first use (``tests/services/synapse.py``, 35-60 s once, then reused), starts it
on 127.0.0.1 with the test configuration and stops it by pid at the end. The README's test
command runs these tests with no extra step.

It skips only when pip could not reach the package index to install Synapse (a machine with no
network and no cached install): then there is no homeserver to test against, and that reason is
the skip message. Any other install or start failure is an error.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from nio import AsyncClient

from tests.services.synapse import SynapseInstallError, SynapseServer, start_synapse

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """One Synapse on 127.0.0.1 for the whole session."""
    folder: Path = tmp_path_factory.mktemp("synapse")
    try:
        server = start_synapse(folder)
    except SynapseInstallError as exc:
        if exc.offline:
            pytest.skip(f"Synapse cannot be installed: the package index is unreachable ({exc})")
        raise
    try:
        yield server
    finally:
        server.stop()


def register(server: SynapseServer, name: str, device: str = "SETUP") -> str:
    """Register ``name`` (tests only: open registration with the dummy stage); its user id."""
    body = {
        "username": name,
        "password": PASSWORD,
        "device_id": device,
        "auth": {"type": "m.login.dummy"},
        "inhibit_login": True,
    }
    resp = httpx.post(f"{server.url}/_matrix/client/v3/register", json=body, timeout=30)
    if resp.status_code == 401:  # asked for the stage first: resend with its session
        body["auth"] = {"type": "m.login.dummy", "session": resp.json()["session"]}
        resp = httpx.post(f"{server.url}/_matrix/client/v3/register", json=body, timeout=30)
    resp.raise_for_status()
    return str(resp.json()["user_id"])


@pytest.fixture
def new_user(synapse: SynapseServer):  # type: ignore[no-untyped-def]
    """``new_user("alice")``: a fresh registered user (a unique localpart); returns it."""

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        register(synapse, name)
        return name

    return make


@pytest.fixture
async def nio_client(synapse: SynapseServer) -> AsyncIterator:  # type: ignore[type-arg]
    """``await nio_client(name)``: a logged-in matrix-nio client (the independent client)."""
    clients: list[AsyncClient] = []

    async def make(name: str) -> AsyncClient:
        client = AsyncClient(synapse.url, f"@{name}:{synapse.server_name}")
        resp = await client.login(PASSWORD, device_name="nio")
        assert getattr(resp, "access_token", None), resp
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
