"""Controlled shutdown of an SPU (what Kafka calls controlled.shutdown.enable).

On SIGTERM (core/node/serve.py) an SPU does not simply close: it tells the SC leader it is
leaving (heartbeats with ``leaving`` set, core/sc/leaving.py), the SC marks it not alive and
elects another live in-sync replica for every partition it leads, and the SPU keeps serving
(fetches from followers, produce answers that the high watermark now covers) until its
metadata shows the hand-over done, at most ``shutdown_timeout_ms``; then it stops as before.
A second SIGTERM or SIGINT stops it at once.

* :func:`shutdown_pending`: the pure decision, from the SPU's metadata: why it must still
  wait, or None when it may exit.
* :func:`controlled_shutdown`: the asyncio edge, run by ``SpuServer.drain``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

from ..protocol.errors import KolkError

log = logging.getLogger("kolk.spu")

SHUTDOWN_TIMEOUT_MS_MAX = 600_000  # the longest --shutdown-timeout-ms an operator may ask for
TELL_WITHIN_S = 3.0  # no SC leader took the news this fast: stop without a hand-over (none can happen)
POLL_S = 0.05  # how often the SPU looks at its metadata while it waits (a period, not synchronisation)


def _alive(spus: Mapping[int, Mapping[str, Any]], spu_id: int) -> bool:
    return bool(spus.get(spu_id, {}).get("status", {}).get("alive"))


def shutdown_pending(me: int, partitions: Mapping[str, Mapping[str, Any]],
                     spus: Mapping[int, Mapping[str, Any]]) -> str | None:
    """Why SPU ``me`` must not exit yet, or None when it may.

    It waits until the SC has marked it not alive (so no election picks it again) and no
    partition it leads has another live in-sync replica that could take over. A partition whose
    only live in-sync replica is ``me`` keeps it as leader: exiting is no worse then than waiting.
    An SPU the metadata does not know (never registered, or removed) has nothing to hand over.
    """
    if me not in spus:
        return None
    if _alive(spus, me):
        return f"the SC has not yet marked SPU {me} as stopping"
    for name in sorted(partitions):
        status = partitions[name].get("status", {})
        if status.get("leader") != me:
            continue
        others = [r for r in status.get("isr", []) if r != me and _alive(spus, r)]
        if others:
            return f"{name} is still led by SPU {me} (SPU {others[0]} can take over)"
    return None


async def controlled_shutdown(server: Any, timeout_ms: int) -> str | None:
    """Hand this SPU's leaderships over before it stops; at most ``timeout_ms``.

    ``server`` is the SpuServer: its ``leaving`` flag makes every heartbeat say so, and its
    ``partitions`` and ``spus`` are the metadata the watch keeps current. Returns None when
    the hand-over is done, else why it was cut short (logged): the deadline passed, or no SC
    leader took the news within :data:`TELL_WITHIN_S` (an SC group that is down cannot move
    anything; waiting would only delay the stop).
    """
    me = server.config.spu_id
    server.leaving = True
    started = time.monotonic()
    deadline = started + timeout_ms / 1000
    log.info("SPU %d is stopping: handing its leaderships over (at most %d ms; a second SIGTERM or SIGINT "
             "stops it at once)", me, timeout_ms)
    told = False
    next_tell = started
    while True:
        now = time.monotonic()
        why = shutdown_pending(me, server.partitions, server.spus)
        if why is None:
            log.info("SPU %d handed its leaderships over in %d ms; stopping", me, int((now - started) * 1000))
            return None
        if now >= deadline:
            log.warning("SPU %d stops before the hand-over is done (--shutdown-timeout-ms %d): %s", me, timeout_ms,
                        why)
            return why
        if not told and now - started >= min(TELL_WITHIN_S, timeout_ms / 1000):
            log.warning("SPU %d stops without a hand-over: no SC leader answered within %.0f s", me, TELL_WITHIN_S)
            return "no SC leader answered"
        if not told and now >= next_tell:
            # The heartbeat loop says it too, once per interval; this says it now.
            try:
                limit = min(deadline, started + TELL_WITHIN_S) - now
                await asyncio.wait_for(server.admin.heartbeat(me, leaving=True), max(limit, 0.01))
                told = True
            except (KolkError, asyncio.TimeoutError, OSError) as e:
                log.warning("telling the SC that SPU %d is stopping failed, trying again: %s", me, e)
                next_tell = time.monotonic() + 0.2
        await asyncio.sleep(POLL_S)  # a period: the metadata arrives on the watch
