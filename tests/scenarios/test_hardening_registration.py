"""Open registration and failed logins are limited per client address (issue 13, item 3).

The reference server (open registration, as on loopback) limits logins per *user name* only:
fresh names are never limited, so a few clients create accounts without end, and anyone who
hammers a victim's name with wrong passwords locks the victim out of new logins. Clients
here come from several addresses of 127.0.0.0/8 (each bound with ``local_address``). This
proves, on real sockets:

- from each address, a burst of 40 registrations of fresh names is cut short with ``429``
  and a ``Retry-After``;
- while wrong passwords for the victim are hammered from four addresses, the victim's correct
  password, from an address of its own, still logs in.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from syncengine.server.testing import run_server

pytestmark = [pytest.mark.integration]

ATTACKERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
VICTIM_ADDRESS = "127.0.0.1"
#: Fresh names each attacker address tries to register in one burst.
REGISTRATIONS = 40
#: Wrong passwords each attacker address tries for the victim.
WRONG_PASSWORDS = 40
#: Wrong passwords answered before the victim tries: twice the server's login burst per name.
UNDER_WAY = 40


def client_from(url: str, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address`` (in 127.0.0.0/8)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=10)


async def login(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.post("/v1/login", json={"user": user, "password": password, "device": "d"})


@pytest.mark.timeout(60)
async def test_registration_burst_is_limited_per_address(tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv") as srv:

        async def burst(n: int, address: str) -> list[httpx.Response]:
            async with client_from(srv.url, address) as client:
                return [
                    await login(client, f"fresh{n}x{i}", "pw-12345") for i in range(REGISTRATIONS)
                ]

        answers = await asyncio.gather(*(burst(n, a) for n, a in enumerate(ATTACKERS)))
        for address, responses in zip(ATTACKERS, answers, strict=True):
            statuses = Counter(r.status_code for r in responses)
            if set(statuses) - {200, 429}:
                raise RuntimeError(f"unexpected answers from {address}: {statuses}")
            assert statuses[429] > 0, (
                f"{address} registered {statuses[200]} fresh names in a row, never refused"
            )
            refused = [r for r in responses if r.status_code == 429]
            assert all(r.headers.get("retry-after") for r in refused)
        created = sum(r.status_code == 200 for responses in answers for r in responses)
        assert created < len(ATTACKERS) * REGISTRATIONS


@pytest.mark.timeout(60)
async def test_victim_logs_in_while_wrong_passwords_are_hammered(tmp_path: Path) -> None:
    async with run_server(tmp_path / "srv") as srv:
        async with client_from(srv.url, VICTIM_ADDRESS) as victim:
            r = await login(victim, "victim", "the-right-password")
            if r.status_code != 200:
                raise RuntimeError(f"the victim could not register: {r.text}")

            answered: list[int] = []

            async def hammer(address: str) -> None:
                async with client_from(srv.url, address) as client:
                    for i in range(WRONG_PASSWORDS):
                        answered.append((await login(client, "victim", f"wrong-{i}")).status_code)

            attack = [asyncio.create_task(hammer(a)) for a in ATTACKERS]
            try:
                deadline = time.monotonic() + 30
                while len(answered) < UNDER_WAY and not all(t.done() for t in attack):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the attack stalled after {len(answered)} attempts")
                    await asyncio.sleep(0.01)
                r = await login(victim, "victim", "the-right-password")
                assert r.status_code == 200, (
                    f"the victim's correct password got {r.status_code} {r.text} after "
                    f"{len(answered)} wrong ones from {len(ATTACKERS)} other addresses"
                )
            finally:
                await asyncio.gather(*attack, return_exceptions=True)
            statuses = Counter(answered)
            if set(statuses) - {401, 429}:
                raise RuntimeError(f"unexpected answers to wrong passwords: {statuses}")
            assert statuses[429] > 0, "wrong passwords were never limited"
