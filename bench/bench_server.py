"""Reference server: live clients in conversations of 10, p99 send -> delivered to all.

The server runs in a child process. Users, conversations of 10 members and tokens are
written with the server's storage API before it starts (no REST logins). This process then
opens one raw websockets client per user and, in each conversation, one member sends with
``POST /v1/ops`` (httpx) at 1 message/s (faster for small steps, so every step has at least
``MIN_SAMPLES`` messages). A message's latency runs from just before its POST to the moment
the last of the conversation's 10 live clients has received it.

Client counts step up (10, 50, 100, 250, 500, 1000, 1500, 2000) until p99 exceeds 250 ms or
the time budget is spent; the figure is the largest count whose p99 stays within 250 ms.
All clients live in this one process: at the top steps it, not the server, may be the
bottleneck, so the figure is a lower bound of the server's capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import benchlib as bl
import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from syncengine.models import new_id

GROUP = 10
LIMIT_MS = 250.0
STEPS = (10, 50, 100, 250, 500, 1000, 1500, 2000)
MIN_SAMPLES = 100
BUDGET_S = 45.0


def setup_server(data_dir: bl.Path, n: int) -> tuple[list[str], dict[str, str], list[str]]:
    """Users u0..u{n-1} in conversations of GROUP; returns users, tokens, conversation ids."""
    from syncengine.server.storage import Storage

    data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(data_dir / "server.sqlite3")
    users = [f"u{i}" for i in range(n)]
    tokens = {}
    cids = []
    try:
        for u in users:
            storage.set_password(u, b"salt", b"hash", "scrypt$n=2$r=8$p=1")
            tokens[u] = storage.issue_token(u, "bench", 3600)
        for g in range(0, n, GROUP):
            cid = new_id()
            members = tuple(sorted(users[g : g + GROUP]))
            storage.create_conversation(members[0], cid, f"group {g // GROUP}", members)
            cids.append(cid)
    finally:
        storage.close()
    return users, tokens, cids


class Step:
    def __init__(self) -> None:
        self.pending: dict[str, list[float]] = {}  # body -> [t_send, remaining, t_last]
        self.latencies: list[float] = []

    def received(self, text: str | bytes) -> None:
        if b'"message_received"' not in (text if isinstance(text, bytes) else text.encode()):
            return
        body = orjson.loads(text).get("body")
        entry = self.pending.get(body)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.latencies.append((time.perf_counter() - entry[0]) * 1000)
            del self.pending[body]


async def reader(ws: ClientConnection, step: list[Step]) -> None:
    with contextlib.suppress(Exception):
        async for text in ws:
            step[0].received(text)


async def open_client(url: str, token: str) -> ClientConnection:
    ws = await connect(url, compression=None, ping_interval=None, max_queue=None)
    await ws.send(orjson.dumps({"type": "auth", "token": token}).decode())
    ready = orjson.loads(await ws.recv())
    assert ready.get("type") == "ready", ready
    return ws


async def run_step(
    http: httpx.AsyncClient,
    tokens: dict[str, str],
    groups: list[tuple[str, str]],
    step: Step,
    duration: float,
) -> None:
    rate = max(1.0, MIN_SAMPLES / (len(groups) * duration))
    interval = 1.0 / rate
    start = time.perf_counter()
    tasks = []
    seq = 0

    async def send(sender: str, cid: str, body: str) -> None:
        step.pending[body] = [time.perf_counter(), GROUP, 0.0]
        op = {"op_id": new_id(), "kind": "send", "conversation_id": cid, "body": body}
        resp = await http.post(
            "/v1/ops",
            content=orjson.dumps({"ops": [op]}),
            headers={"Authorization": f"Bearer {tokens[sender]}"},
        )
        resp.raise_for_status()

    rounds = max(1, int(duration * rate))
    for r in range(rounds):
        for i, (sender, cid) in enumerate(groups):
            # spread the conversations' sends evenly over each interval
            wake = start + r * interval + i * interval / len(groups)
            delay = wake - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            seq += 1
            tasks.append(asyncio.ensure_future(send(sender, cid, f"m{seq}")))
    await asyncio.gather(*tasks)
    deadline = time.monotonic() + 5
    while step.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def run(smoke: bool, seed: int) -> None:
    steps = (10,) if smoke else STEPS
    duration = 1.0 if smoke else 4.0
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    best = 0
    with bl.workdir() as tmp:
        users, tokens, cids = setup_server(tmp / "server", max(steps))
        with bl.server_process(tmp / "server") as srv:
            ws_url = "ws" + srv.url.removeprefix("http") + "/v1/live"
            clients: list[ClientConnection] = []
            readers: list[asyncio.Task[None]] = []
            current = [Step()]
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(base_url=srv.url, limits=limits, timeout=30) as http:
                try:
                    for count in steps:
                        if time.perf_counter() - started > BUDGET_S:
                            break
                        new = users[len(clients) : count]
                        for chunk in range(0, len(new), 100):
                            opened = await asyncio.gather(
                                *(open_client(ws_url, tokens[u]) for u in new[chunk : chunk + 100])
                            )
                            clients.extend(opened)
                            readers.extend(
                                asyncio.ensure_future(reader(ws, current)) for ws in opened
                            )
                        await asyncio.sleep(0.2)  # let presence announcements settle
                        step = current[0] = Step()
                        groups = [(users[g], cids[g // GROUP]) for g in range(0, count, GROUP)]
                        await run_step(http, tokens, groups, step, duration)
                        lost = len(step.pending)
                        p50 = bl.percentile(step.latencies, 50)
                        p99 = bl.percentile(step.latencies, 99)
                        ok = lost == 0 and p99 <= LIMIT_MS
                        results.append(
                            {
                                "clients": count,
                                "p50_ms": round(p50, 2),
                                "p99_ms": round(p99, 2),
                                "messages": len(step.latencies),
                                "undelivered": lost,
                            }
                        )
                        print(
                            f"   {count:5d} clients: p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                            f"({len(step.latencies)} messages, {lost} undelivered)"
                        )
                        if not ok:
                            break
                        best = count
                finally:
                    for task in readers:
                        task.cancel()
                    await asyncio.gather(
                        *(ws.close() for ws in clients), *readers, return_exceptions=True
                    )
    top = steps[-1]
    last = results[-1] if results else {"p99_ms": float("nan")}
    bl.emit(
        "server_fanout",
        "reference server: live clients in conversations of 10, p99 send -> delivered to all",
        unit="clients",
        value=best,
        baseline=None,
        ratio=None,
        target=f"largest count up to {top} with p99 <= {LIMIT_MS:.0f} ms",
        met=best > 0,
        smoke=smoke,
        seconds=time.perf_counter() - started,
        p99_ms_at_best=next((r["p99_ms"] for r in results if r["clients"] == best), None),
        p99_ms_last=last["p99_ms"],
        steps=results,
    )


def main() -> None:
    args = bl.parse_args(__doc__ or "")
    asyncio.run(run(args.smoke, args.seed))


if __name__ == "__main__":
    main()
