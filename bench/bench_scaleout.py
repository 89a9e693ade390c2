"""Scale-out: one node vs two nodes on one PostgreSQL database, and a send on PostgreSQL vs
SQLite, in the same run.

1. The cost of a send in storage: one ``send`` operation per write transaction, through
   :func:`syncengine.server.writes.apply_op`, on ``SqliteStorage`` (``synchronous=FULL``) and
   on ``PostgresStorage`` (a throw-away PostgreSQL started from the machine's binaries with
   its durable defaults: ``fsync`` and ``synchronous_commit`` on, like SQLite's FULL).
2. Live capacity: ``syncengine serve --database`` processes (1, then 2 on a fresh database;
   that PostgreSQL runs with ``fsync`` off, so the figure is the nodes' own, not this
   machine's disk: with fsync on, appends are bounded by one commit at a time),
   every user live on a raw WebSocket (spread over the nodes), senders ``POST /v1/ops`` at
   a paced rate, stepped up; each message is timed from just before its POST to its arrival
   on every member's live connection. A step passes when every delivery arrived and the
   p99 is <= 250 ms; the figure is the highest passing rate (messages/s).

Caveat printed with the figures: on this 2-core machine the nodes, PostgreSQL and the load
generator share the same two cores, so the second node adds processes, not hardware.
Target: report only (``met`` is None): the figures feed ``docs/scaling.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as bl
import httpx
import orjson
from websockets.asyncio.client import connect

from syncengine.models import new_id

REPO = Path(__file__).resolve().parents[1]
P99_BOUND_MS = 250.0
MEMBERS = 4  # per conversation: member 0 sends, all four are live


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 1. the cost of a send in storage ------------------------------------------------------------


def send_cost(storage: Any, n: int) -> dict[str, float]:
    from syncengine.server import writes

    cid = new_id()
    with storage.write() as tx:
        writes.create_conversation(tx, "alice", cid, "bench", ("alice", "bob"))
    times = []
    for i in range(n):
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": f"{bl.BODY}{i}"}
        t = time.perf_counter()
        with storage.write() as tx:
            writes.apply_op(tx, "alice", "d", op)
        times.append((time.perf_counter() - t) * 1000)
    return {
        "p50_ms": bl.percentile(times, 50),
        "p99_ms": bl.percentile(times, 99),
        "per_s": n / (sum(times) / 1000),
    }


# --- 2. live capacity ----------------------------------------------------------------------------


class Node:
    """``syncengine serve --database URL`` in a child process, stopped by its pid."""

    def __init__(self, database: str, log: Path) -> None:
        self.port = _free_port()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "syncengine.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--database",
                    database,
                    "--open-registration",
                    # The load generator is one client address logging in every user and
                    # posting for all of them: the per-address and per-user abuse limits
                    # would measure themselves, not the nodes.
                    "--register-rate",
                    "10000",
                    "--register-burst",
                    "10000",
                    "--rate",
                    "10000",
                    "--burst",
                    "10000",
                    "--max-connections-per-ip",
                    "0",
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(200):  # 20 s
                if self.proc.poll() is not None:
                    raise RuntimeError("node exited")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/v1/health", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("node not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


async def _accounts(
    nodes: list[Node], conversations: int
) -> tuple[list[str], dict[str, str], list[str]]:
    """Log every user in (spread over the nodes) and create the conversations."""
    users = [f"u{c}m{m}" for c in range(conversations) for m in range(MEMBERS)]
    tokens: dict[str, str] = {}
    async with httpx.AsyncClient() as client:
        for i, user in enumerate(users):
            r = await client.post(
                nodes[i % len(nodes)].url + "/v1/login",
                json={"user": user, "password": "bench-password", "device": "d"},
            )
            r.raise_for_status()
            tokens[user] = r.json()["token"]
        cids = []
        for c in range(conversations):
            cid = new_id()
            r = await client.post(
                nodes[c % len(nodes)].url + "/v1/conversations",
                json={
                    "id": cid,
                    "title": f"c{c}",
                    "members": [f"u{c}m{m}" for m in range(1, MEMBERS)],
                },
                headers={"Authorization": f"Bearer {tokens[f'u{c}m0']}"},
            )
            r.raise_for_status()
            cids.append(cid)
    return users, tokens, cids


class Step:
    """One paced step: ``rate`` sends a second for ``step_s``, timed to every member."""

    def __init__(self, rate: int, step_s: float) -> None:
        self.rate = rate
        self.n = max(1, int(rate * step_s))
        self.sent: dict[str, float] = {}
        self.failed: list[Any] = []
        self.sem = asyncio.Semaphore(64)

    async def post(
        self, client: httpx.AsyncClient, i: int, cids: list[str], tokens: dict[str, str]
    ) -> None:
        c = i % len(cids)
        body = f"r{self.rate}-{i}"
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cids[c], "body": body}
        async with self.sem:
            self.sent[body] = time.perf_counter()
            try:
                r = await client.post(
                    "/v1/ops",
                    content=orjson.dumps({"ops": [op]}),
                    headers={
                        "Authorization": f"Bearer {tokens[f'u{c}m0']}",
                        "Content-Type": "application/json",
                    },
                )
                if r.status_code != 200:
                    self.failed.append(r.status_code)
            except httpx.HTTPError as exc:
                self.failed.append(type(exc).__name__)

    async def run(
        self,
        clients: list[httpx.AsyncClient],
        cids: list[str],
        tokens: dict[str, str],
        arrivals: list[tuple[str, float]],
    ) -> dict[str, Any]:
        arrivals.clear()
        start = time.perf_counter()
        tasks = []
        for i in range(self.n):
            await asyncio.sleep(max(0.0, start + i / self.rate - time.perf_counter()))
            tasks.append(asyncio.create_task(self.post(clients[i % len(clients)], i, cids, tokens)))
        await asyncio.gather(*tasks)
        expected = self.n * MEMBERS
        deadline = time.monotonic() + 5
        while len(arrivals) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        lat = [(t - self.sent[b]) * 1000 for b, t in arrivals if b in self.sent]
        p99 = bl.percentile(lat, 99) if lat else float("inf")
        ok = not self.failed and len(lat) >= expected and p99 <= P99_BOUND_MS
        print(
            f"   {len(clients)} node(s) @ {self.rate}/s: p99 {p99:.0f} ms, "
            f"{len(lat)}/{expected} delivered, {len(self.failed)} failed "
            f"{sorted(set(map(str, self.failed)))[:3]}, {'ok' if ok else 'over'}",
            flush=True,
        )
        return {
            "rate": self.rate,
            "delivered": len(lat),
            "expected": expected,
            "p50_ms": bl.percentile(lat, 50) if lat else None,
            "p99_ms": p99,
            "achieved_per_s": self.n / elapsed,
            "failed": len(self.failed),
            "ok": ok,
        }


async def _listen(
    nodes: list[Node],
    users: list[str],
    tokens: dict[str, str],
    arrivals: list[tuple[str, float]],
    receivers: list[asyncio.Task[None]],
    sockets: list[Any],
) -> None:
    """Every user live on a raw WebSocket (spread over the nodes), arrivals timed."""

    async def receive(ws: Any) -> None:
        with contextlib.suppress(Exception):
            async for text in ws:
                if '"message_received"' in text:
                    arrivals.append((orjson.loads(text)["body"], time.perf_counter()))

    for i, user in enumerate(users):
        node = nodes[i % len(nodes)]
        ws = await connect(
            f"ws://127.0.0.1:{node.port}/v1/live", compression=None, ping_interval=None
        )
        await ws.send(orjson.dumps({"type": "auth", "token": tokens[user]}).decode())
        assert orjson.loads(await ws.recv())["type"] == "ready"
        sockets.append(ws)
        receivers.append(asyncio.create_task(receive(ws)))


async def capacity(
    database: str, tmp: Path, n_nodes: int, conversations: int, steps: list[int], step_s: float
) -> dict[str, Any]:
    nodes = [Node(database, tmp / f"node{n_nodes}-{i}.log") for i in range(n_nodes)]
    receivers: list[asyncio.Task[None]] = []
    sockets: list[Any] = []
    arrivals: list[tuple[str, float]] = []  # (body, arrival time)
    try:
        await asyncio.gather(*(n.ready() for n in nodes))
        users, tokens, cids = await _accounts(nodes, conversations)
        await _listen(nodes, users, tokens, arrivals, receivers, sockets)
        clients = [
            httpx.AsyncClient(base_url=n.url, limits=httpx.Limits(max_connections=32))
            for n in nodes
        ]
        results = []
        try:
            for rate in steps:
                results.append(await Step(rate, step_s).run(clients, cids, tokens, arrivals))
                if not results[-1]["ok"]:
                    break
        finally:
            for c in clients:
                await c.aclose()
        passing = [r for r in results if r["ok"]]
        best = passing[-1] if passing else None
        return {
            "nodes": n_nodes,
            "live_clients": len(users),
            "best_rate": best["rate"] if best else 0,
            "best_p99_ms": best["p99_ms"] if best else None,
            "steps": results,
        }
    finally:
        for task in receivers:
            task.cancel()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        for node in nodes:
            node.stop()


async def run(smoke: bool, seed: int) -> None:
    from syncengine.server.storage import SqliteStorage
    from syncengine.server.storage.postgres import PostgresStorage
    from tests.services.postgres import find_bin_dir, start_postgres

    started = time.perf_counter()
    if find_bin_dir() is None:
        bl.emit(
            "scaleout",
            "scale-out: skipped (no PostgreSQL binaries on this machine)",
            unit="messages/s",
            value=0.0,
            baseline=None,
            ratio=None,
            target="report only",
            met=None,
            smoke=smoke,
            seconds=time.perf_counter() - started,
        )
        return
    n_sends = bl.sized(1000, smoke, minimum=50, fraction=0.05)
    conversations = 2 if smoke else 20
    steps = [50] if smoke else [25, 50, 75, 100, 150, 200, 300, 400, 600]
    step_s = 0.5 if smoke else 2.0
    base = Path(tempfile.mkdtemp(prefix="syncengine-bench-pg-"))
    base.chmod(0o711)  # the server runs as the postgres user when we are root
    try:
        with bl.workdir() as tmp:
            # 1. a send, durable on both sides (PostgreSQL's defaults vs SQLite's FULL)
            server = start_postgres(base / "durable", durable=True)
            try:
                sqlite = SqliteStorage(tmp / "server.sqlite3")
                pg = PostgresStorage(server.create_database("sendcost"))
                try:
                    cost_sqlite = send_cost(sqlite, n_sends)
                    cost_pg = send_cost(pg, n_sends)
                finally:
                    sqlite.close()
                    pg.close()
            finally:
                server.stop()
            # 2. the nodes' own capacity: fsync off, so the disk of this machine is not
            # the figure (with fsync on, appends are bounded by one commit at a time)
            server = start_postgres(base / "fast")
            try:
                one = await capacity(
                    server.create_database("one"), tmp, 1, conversations, steps, step_s
                )
                two = await capacity(
                    server.create_database("two"), tmp, 2, conversations, steps, step_s
                )
            finally:
                server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratio = two["best_rate"] / one["best_rate"] if one["best_rate"] else None
    bl.emit(
        "scaleout",
        f"scale-out: live messages/s at p99 <= {P99_BOUND_MS:.0f} ms, 2 nodes vs 1 "
        f"({one['live_clients']} live clients, {MEMBERS} per conversation)",
        unit="messages/s",
        value=float(two["best_rate"]),
        baseline=float(one["best_rate"]),
        ratio=ratio,
        target="report only (2 cores shared by nodes, PostgreSQL and the load generator)",
        met=None,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        one_node_rate=one["best_rate"],
        one_node_p99_ms=one["best_p99_ms"],
        two_node_rate=two["best_rate"],
        two_node_p99_ms=two["best_p99_ms"],
        deliveries_per_message=MEMBERS,
        send_sqlite_p50_ms=cost_sqlite["p50_ms"],
        send_sqlite_p99_ms=cost_sqlite["p99_ms"],
        send_sqlite_per_s=cost_sqlite["per_s"],
        send_postgres_p50_ms=cost_pg["p50_ms"],
        send_postgres_p99_ms=cost_pg["p99_ms"],
        send_postgres_per_s=cost_pg["per_s"],
        sends_measured=n_sends,
        load_average_1m=os.getloadavg()[0],
        seed=seed,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
