"""The raw catch-up loop, run as its own process (the baseline of ``bench_cli_catchup.py``).

    python bench/rawpull.py URL DB SINCE PAGE [FULL|NORMAL|PULL]

Pulls ``GET /v1/events?since=&limit=PAGE`` with httpx until ``has_more`` is false, decodes
each page with orjson and inserts its ``message_received`` rows with ``INSERT ... ON CONFLICT
DO NOTHING`` (plus the cursor), one ``BEGIN IMMEDIATE`` transaction per page, into ``DB``: a
store with the engine's real schema, opened as the store opens it (WAL, ``synchronous=FULL``).
The bearer token is read from ``DB.token``, as the CLI reads it. The last argument is the
store's ``synchronous`` setting (default ``FULL``, the store's; ``NORMAL`` shows what the fsync
of each commit costs), or ``PULL``: pull and decode only, nothing written (the fastest a client
can ask for pages: what a server-side limit meets).

Nothing is overlapped and nothing is checked beyond what the insert needs: this is the floor
a user's catch-up could reach in Python with these libraries. It imports nothing from
syncengine, so its process start-up is the interpreter's plus httpx's and orjson's.

A ``429`` is waited out (``retry_after_ms`` of the body, else ``Retry-After``) and counted.
Prints one JSON line on stdout: events, pages, 429s, seconds (in-process), first-429 marks.
"""

from __future__ import annotations

import sqlite3
import sys
import time

T0 = time.perf_counter()

import httpx  # noqa: E402
import orjson  # noqa: E402

INSERT = (
    "INSERT INTO messages(conversation_id, seq, id, op_id, sender, body, state, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, 'sent', ?) ON CONFLICT DO NOTHING"
)
CURSOR = (
    "INSERT INTO cursors(stream, pos, updated_at) VALUES ('events', ?, ?) "
    "ON CONFLICT(stream) DO UPDATE SET pos = excluded.pos, updated_at = excluded.updated_at "
    "WHERE excluded.pos > cursors.pos"
)


def main(url: str, db: str, since: int, page: int, mode: str = "FULL") -> None:
    with open(f"{db}.token", "rb") as f:
        token = orjson.loads(f.read())["token"]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if mode == 'PULL' else mode}")
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
    events = pages = throttled = 0
    first_429_s = first_429_events = None
    started = time.perf_counter()
    try:
        while True:
            resp = client.get("/v1/events", params={"since": since, "limit": page})
            if resp.status_code == 429:
                throttled += 1
                if first_429_s is None:
                    first_429_s = time.perf_counter() - started
                    first_429_events = events
                body = orjson.loads(resp.content) if resp.content else {}
                wait_ms = body.get("retry_after_ms")
                if wait_ms is None:
                    wait_ms = 1000 * float(resp.headers.get("retry-after", "1"))
                time.sleep(wait_ms / 1000)
                continue
            resp.raise_for_status()
            body = orjson.loads(resp.content)
            if mode == "PULL":
                events += len(body["events"])
                pages += 1
                since = body["next"]
                if not body["has_more"]:
                    break
                continue
            rows = [
                (
                    e["conversation_id"],
                    e["seq"],
                    e["message_id"],
                    e.get("op_id"),
                    e["sender"],
                    e["body"],
                    e["ts_ms"] / 1000,
                )
                for e in body["events"]
                if e["type"] == "message_received"
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, rows)
            conn.execute(CURSOR, (body["next"], time.time()))
            conn.execute("COMMIT")
            events += len(body["events"])
            pages += 1
            since = body["next"]
            if not body["has_more"]:
                break
    finally:
        client.close()
        conn.close()
    done = time.perf_counter()
    print(
        orjson.dumps(
            {
                "events": events,
                "pages": pages,
                "throttled": throttled,
                "seconds": done - started,
                "import_s": started - T0,
                "first_429_s": first_429_s,
                "first_429_events": first_429_events,
            }
        ).decode(),
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or sys.argv[5:] not in ([], ["FULL"], ["NORMAL"], ["PULL"]):
        raise SystemExit("usage: rawpull.py URL DB SINCE PAGE [FULL|NORMAL|PULL]")
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:])
