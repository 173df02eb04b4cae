"""An SPU's private address must reach the SPU itself (DESIGN.md §2; docs/operations.md,
"Ports and addresses").

Other SPUs replicate from the private address. One that points elsewhere (a typo, a proxy to
another SPU, a port nobody listens on) left replication silently dead while every SPU showed
alive. So the SPU dials it as the other SPUs will (:class:`PeerPool`: with TLS, its own node
certificate) and asks who answers (``identify``: the SPU id and a random per-process
instance id). Proxies in front of it may be starting at the same time (the fault harness), so
it tries again for a bounded time.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from ..protocol.channel import CallRejected, ConnectionLost
from ..protocol.errors import KolkError
from .follower import PeerPool

if TYPE_CHECKING:
    from .config import SpuConfig

PRIVATE_CHECK_S_MAX = 10.0


async def private_address_problem(config: "SpuConfig", instance_id: str) -> str:
    """What answers at the SPU's private address when it is not this process (one line), or
    "" when it is."""
    private = config.private_address or config.public_address
    pool = PeerPool(config.tls, config.credential)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PRIVATE_CHECK_S_MAX
    backoff = 0.05
    found = ""  # what answered there, when not this SPU
    try:
        while True:
            try:
                timeout_s = max(0.1, min(3.0, deadline - loop.time()))
                async with asyncio.timeout(timeout_s):
                    answer = await (await pool.get(private)).call("identify", timeout_s)
                if answer.instanceId == instance_id:
                    return ""
                if answer.result.ok:
                    found = (f"another process of SPU {answer.spuId} answers there" if answer.spuId ==
                             config.spu_id else f"another SPU (SPU {answer.spuId}) answers there")
                    break  # not going to change: no point waiting
                found = f"it refuses this SPU: {answer.result.error.message}"
            except KolkError as e:  # from connect (core/transport.py)
                # TLS refused is "refused"; anything else is "nothing listens there (yet)".
                cause = e.__cause__
                why = os.strerror(cause.errno).lower() if isinstance(cause, OSError) and cause.errno else str(e)
                found = f"it refuses this SPU: {e}" if not e.retriable else f"nothing answers there ({why})"
            except CallRejected as e:
                found = f"it refuses this SPU (not an SPU, or an older one): {e.error.message}"
            except ConnectionLost as e:
                found = f"it closes the connection (not an SPU, or an older one): {e}"
            except TimeoutError:
                found = f"nothing answers there within {PRIVATE_CHECK_S_MAX:.0f} s"
            pool.drop(private)
            if loop.time() + backoff > deadline:
                break
            await asyncio.sleep(backoff)  # retry backoff, bounded by the deadline
            backoff = min(backoff * 2, 0.5)
    finally:
        pool.close()
    return " ".join(found.split())  # one line, whatever the error text held
