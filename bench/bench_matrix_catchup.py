"""Catch-up against Synapse beside the reference server's, same run, same engine.

A user who was away while ``n`` messages arrived in one conversation catches up with
``SyncEngine.sync_once()``:

- matrix: the engine on a real Synapse (``tests/services/synapse.py``: its own cached venv,
  loopback, test configuration); the ``n`` messages were sent by another user over the
  client-server API; the catch-up is ``/sync`` from the engine's token, the gap filled with
  ``/messages`` (timeline limit 100), each event numbered by the store.
- baseline: the same engine on the reference server (a child process, its log bulk-loaded),
  pulling the same number of messages.

The ratio is Matrix over the reference server: the price of the protocol (the server's
work, pages of 100 instead of 500, JSON nesting), not a target. With ``--smoke`` the script
uses an already installed Synapse only; without one (nothing cached, or no network) it prints
a skipped record and exits 0.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib as bl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "bench-password-long-enough"
CONCURRENCY = 16


def _synapse_available(smoke: bool) -> str | None:
    """Why Synapse cannot be used (None: it can)."""
    from tests.services import synapse as syn

    venv = syn._cache_dir() / f"synapse-{syn.SYNAPSE_VERSION}"
    if smoke and not (venv / ".installed").exists():
        return "Synapse is not installed in the test cache (smoke runs never install it)"
    try:
        syn.ensure_synapse()
    except syn.SynapseInstallError as exc:
        return f"Synapse cannot be installed: {str(exc).splitlines()[0]}"
    return None


async def _register(http: Any, name: str) -> str:
    body: dict[str, Any] = {
        "username": name,
        "password": PASSWORD,
        "auth": {"type": "m.login.dummy"},
        "device_id": "BENCH",
    }
    resp = await http.post("/_matrix/client/v3/register", json=body)
    if resp.status_code == 401:
        body["auth"]["session"] = resp.json()["session"]
        resp = await http.post("/_matrix/client/v3/register", json=body)
    resp.raise_for_status()
    return str(resp.json()["access_token"])


async def _matrix(tmp: Path, n: int) -> tuple[float, int]:
    """Seconds for the engine to catch up ``n`` messages on Synapse, and how many it stored."""
    import httpx

    from syncengine import SyncEngine
    from syncengine.transport.matrix import MatrixTransport
    from tests.services.synapse import synapse_server

    with synapse_server(tmp / "synapse") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
            await _register(http, alice)
            bob_token = await _register(http, bob)
            engine = SyncEngine(
                tmp / "matrix.db",
                connect=False,
                transport_factory=lambda url: MatrixTransport(url, timeout_s=60),
            )
            await engine.open()
            try:
                await engine.login(server.url, alice, PASSWORD, device="BENCH")
                conv = await engine.create_conversation("bench", [bob])
                await engine.sync_once()
                room_id = await _bob_joins(http, bob_token, conv.id, server.server_name)
                await _bob_sends(http, bob_token, room_id, n)
                t = time.perf_counter()
                await engine.sync_once()
                seconds = time.perf_counter() - t
                stored = engine.store.message_count(conv.id)
            finally:
                await engine.close()
    return seconds, stored


async def _bob_joins(http: Any, token: str, cid: str, server_name: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    alias = f"%23se-{cid}:{server_name}"
    found = await http.get(f"/_matrix/client/v3/directory/room/{alias}", headers=headers)
    found.raise_for_status()
    room_id = str(found.json()["room_id"])
    joined = await http.post(f"/_matrix/client/v3/join/{room_id}", headers=headers, json={})
    joined.raise_for_status()
    return room_id


async def _bob_sends(http: Any, token: str, room_id: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            i = queue.pop(0)
            path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/bench-{i}"
            body = {"msgtype": "m.text", "body": f"{bl.BODY}{i}"}
            (await http.put(path, headers=headers, json=body)).raise_for_status()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _reference(tmp: Path, n: int, seed: int) -> tuple[float, int]:
    """Seconds for the same engine to catch up ``n`` messages on the reference server."""
    bl.server_bulk_load(tmp / "server", "alice", bl.message_events(n, 1, seed=seed, convs=1))
    with bl.server_process(tmp / "server") as srv:
        engine = await bl.logged_in_engine(tmp / "ref.db", srv.url, "alice")
        try:
            t = time.perf_counter()
            done = await engine.sync_once()
            seconds = time.perf_counter() - t
        finally:
            await engine.close()
    return seconds, done.pulled


async def run(smoke: bool, seed: int) -> None:
    n = bl.sized(1_000, smoke, minimum=30)  # within the transport's gap-fill cap (1000)
    started = time.perf_counter()
    why_not = _synapse_available(smoke)
    if why_not is not None:
        print(f"skipped: {why_not}")
        bl.emit(
            "matrix_catch_up",
            f"catch-up of {n:,} messages on Synapse vs the reference server (skipped)",
            unit="events/s",
            value=None,  # type: ignore[arg-type]
            baseline=None,
            ratio=None,
            target="reported beside the reference server's (no target)",
            met=None,
            smoke=smoke,
            seconds=time.perf_counter() - started,
            skipped=why_not,
        )
        return
    with bl.workdir() as tmp:
        ref_s, ref_n = await _reference(tmp, n, seed)
        matrix_s, matrix_n = await _matrix(tmp, n)
    assert ref_n == n, (ref_n, n)
    assert matrix_n == n, (matrix_n, n)
    matrix_rate, ref_rate = n / matrix_s, n / ref_s
    bl.emit(
        "matrix_catch_up",
        f"catch-up of {n:,} missed messages: engine on Synapse vs on the reference server",
        unit="events/s",
        value=matrix_rate,
        baseline=ref_rate,
        ratio=matrix_rate / ref_rate,
        target="reported beside the reference server's (no target)",
        met=None,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        events=n,
        matrix_s=matrix_s,
        reference_s=ref_s,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
