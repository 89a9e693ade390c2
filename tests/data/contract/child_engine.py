"""A child process of the kill -9 scenario: an app with a SyncEngine that sends and syncs.

Usage: ``python child_engine.py DB CONVERSATION_ID START END SETTINGS_JSON [--finish]``

For each i in [START, END) it prints ``ATTEMPT i op_id``, sends ``k<i>`` with that op id and
prints ``ACK i op_id`` once ``send`` returned (durably queued: G1). The parent kills it with
SIGKILL at a random moment. With ``--finish`` it then waits until the outbox is empty, pulls,
prints ``DONE`` and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from syncengine import SyncEngine
from syncengine.models import new_id


async def main(argv: list[str]) -> int:
    db, cid, start, end, settings = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    finish = "--finish" in argv
    rng = random.Random(start)
    async with SyncEngine(db, **json.loads(settings)) as engine:
        print("READY", flush=True)
        for i in range(start, end):
            op_id = new_id()
            print(f"ATTEMPT {i} {op_id}", flush=True)
            await engine.send(cid, f"k{i}", op_id=op_id)
            print(f"ACK {i} {op_id}", flush=True)
            await asyncio.sleep(rng.uniform(0, 0.01))
        if finish:
            if not await engine.wait_for_pending(60):
                print("PENDING-TIMEOUT", flush=True)
                return 1
            await engine.sync_once()
            print("DONE", flush=True)
        else:
            await asyncio.sleep(3600)  # keep syncing until killed
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
