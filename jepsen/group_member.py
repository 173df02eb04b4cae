"""One member of the harness's consumer group, as its own OS process (jepsen/group_workload.py
starts it with ``python -m jepsen.group_member``): the nemesis kills it with SIGKILL and freezes
it with SIGSTOP. It reads the topic through the group consumer and appends each event to its
JSON lines file (the format: jepsen/group_history.py, ``member_lines``): records handed to it,
assignment changes with their generation, its commits (invoke, then ok/fail/info), ``closing``.
Each line is flushed when written, so a kill -9 loses nothing the member acted on (at most a
torn last line, which the reader ignores). SIGTERM: commit what was handed out, close (leave).

Commits are the member's own (``auto_commit=False``): every ``COMMIT_INTERVAL_MS`` at a poll
boundary, and in ``on_revoked`` while the member still owns the partitions, each with the exact
offsets it carries (the NEXT offset to read), so every commit is in the history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any, TextIO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from jepsen.group_workload import COMMIT_INTERVAL_MS, GROUP, GROUP_TOPIC, SESSION_TIMEOUT_MS  # noqa: E402

POLL_S = 0.2
OP_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 10.0
# What the application does on a revocation before it commits (flushing its state) takes time;
# a coordinator that gives the partitions away before they are handed back lets the next owner
# read while this runs (docs/reliability.md, "Consumer groups").
REVOKE_WORK_MS = 100


class _Member:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.positions: dict[int, int] = {}  # partition -> next offset after the last record handed out
        self.committed: dict[int, int] = {}  # partition -> offset of the last acknowledged commit
        self.commit_id = 0
        self.closing = False
        self.consumer: Any = None

    def emit(self, obj: dict[str, Any]) -> None:
        obj["t"] = time.monotonic()
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()  # a kill -9 loses no event the member acted on

    async def commit(self, parts: set[int] | frozenset[int]) -> None:
        from kolk.groups.names import TopicPartition
        from kolk.protocol.errors import InvalidRequestError, KolkError, StaleMemberError

        offsets = {p: self.positions[p] for p in sorted(parts)
                   if p in self.positions and self.positions[p] != self.committed.get(p)}
        if not offsets:
            return
        self.commit_id += 1
        cid = self.commit_id
        self.emit({"k": "commit", "id": cid, "phase": "invoke", "offsets": sorted(offsets.items())})
        try:
            await asyncio.wait_for(self.consumer.commit({TopicPartition(self.args.topic, p): o
                                                         for p, o in offsets.items()}), OP_TIMEOUT_S)
        except (StaleMemberError, InvalidRequestError) as e:  # refused: not applied, unless an earlier attempt was
            self.emit({"k": "commit", "id": cid, "phase": "info" if e.outcome_unknown else "fail",
                       "error": str(e)[:200]})
            return
        except (KolkError, OSError, asyncio.TimeoutError) as e:
            self.emit({"k": "commit", "id": cid, "phase": "info", "error": str(e)[:200] or type(e).__name__})
            return
        self.committed.update(offsets)
        self.emit({"k": "commit", "id": cid, "phase": "ok"})

    async def on_assigned(self, parts: frozenset[Any], generation: int) -> None:
        self.emit({"k": "assigned", "ps": sorted(tp.partition for tp in parts), "g": generation})

    async def on_revoked(self, parts: frozenset[Any], generation: int) -> None:
        ps = {tp.partition for tp in parts}
        if not self.closing:
            # The consumer has just committed these positions itself (it does on every
            # revocation, before this callback); the member cannot see that commit's outcome, so it
            # is recorded as unknown: the next owner may start there.
            seen = {p: self.positions[p] for p in sorted(ps) if p in self.positions}
            if seen:
                self.commit_id += 1
                self.emit({"k": "commit", "id": self.commit_id, "phase": "invoke", "offsets": sorted(seen.items())})
                self.emit({"k": "commit", "id": self.commit_id, "phase": "info",
                           "error": "the consumer's own commit on revocation (outcome not seen)"})
            # The application's work on revocation (a real one flushes what it built from the
            # records), then its commit: the member still owns them, the coordinator takes it.
            await asyncio.sleep(self.args.revoke_work_ms / 1000)
            await self.commit(ps)
        for p in ps:
            self.positions.pop(p, None)
            self.committed.pop(p, None)
        self.emit({"k": "revoked", "ps": sorted(ps), "g": generation})

    async def on_lost(self, parts: frozenset[Any], generation: int) -> None:
        ps = {tp.partition for tp in parts}
        for p in ps:
            self.positions.pop(p, None)
            self.committed.pop(p, None)
        self.emit({"k": "lost", "ps": sorted(ps), "g": generation})

    async def run(self, stop: asyncio.Event) -> None:
        from kolk.client.client import AsyncClient
        from kolk.client.consumer import Offset

        client = AsyncClient(self.args.sc.split(","), timeout_s=OP_TIMEOUT_S)
        self.consumer = client.consumer(
            self.args.topic, group=self.args.group, start=Offset.beginning(), auto_commit=False,
            session_timeout_ms=self.args.session_timeout_ms, on_assigned=self.on_assigned,
            on_revoked=self.on_revoked, on_lost=self.on_lost)
        next_commit = time.monotonic() + COMMIT_INTERVAL_MS / 1000
        while not stop.is_set():
            recs = await self.consumer.poll(POLL_S)
            if recs:
                self.emit({"k": "deliver", "recs": [[r.partition, r.offset, int(r.value)] for r in recs]})
                for r in recs:
                    self.positions[r.partition] = max(self.positions.get(r.partition, 0), r.offset + 1)
            if time.monotonic() >= next_commit:
                await self.commit(set(self.positions))
                next_commit = time.monotonic() + COMMIT_INTERVAL_MS / 1000
        await self.commit(set(self.positions))
        self.closing = True
        self.emit({"k": "closing"})
        await asyncio.wait_for(self.consumer.close(), CLOSE_TIMEOUT_S)
        await client.close()


def member_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jepsen.group_member", description="one group member of the harness")
    ap.add_argument("--sc", required=True, help="comma-separated SC addresses")
    ap.add_argument("--topic", default=GROUP_TOPIC)
    ap.add_argument("--group", default=GROUP)
    ap.add_argument("--events", required=True, help="JSON lines file the member appends its events to")
    ap.add_argument("--session-timeout-ms", type=int, default=SESSION_TIMEOUT_MS)
    ap.add_argument("--revoke-work-ms", type=int, default=REVOKE_WORK_MS,
                    help="time the application spends on a revocation before it commits and hands back")
    args = ap.parse_args(argv)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with open(args.events, "a", encoding="utf-8") as out:
            await _Member(args, out).run(stop)

    asyncio.run(main())
    return 0


if __name__ == "__main__":
    sys.exit(member_main())
