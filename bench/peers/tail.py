"""The latency consumer, in its own process: ``tail.py SYSTEM ADDRESS STREAM COUNT``.

Prints "ready" at the first record it sees, then, once COUNT timed records arrived, a JSON
list of their latencies in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from peers import latency  # noqa: E402


def main() -> int:
    system, address, stream, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if system == "kolk":
        from peers.kolk_side import tail
    elif system == "nats":
        from peers.nats_side import tail
    elif system == "redis":
        from peers.redis_side import tail
    else:
        raise SystemExit(f"unknown system {system!r}: expected kolk, nats or redis")
    seen = latency.Seen(count)
    if system == "kolk":
        from kolk.client.admin import run

        run(lambda: tail(address, stream, count, seen))
    else:
        asyncio.run(tail(address, stream, count, seen))
    sys.stdout.write(json.dumps(seen.latencies) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
