"""The copy throttle of replicas being added by a move (docs/rebalance.md; Kafka's
follower.replication.throttled.rate): one token bucket per SPU over all its moving replicas,
refilled at the partition spec's ``throttle`` bytes/s, holding at most one second of it. A
follower of a moving replica asks :meth:`MoveThrottle.delay` after each fetch how long to wait
before the next; other replicas are never throttled.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping


def move_throttle(meta: Mapping[str, Any], spu_id: int) -> int:
    """The bytes/s this SPU's replica of a partition copies at: the move's throttle when the
    replica is one the move adds and not yet in the in-sync set, else 0 (unthrottled). Once in
    the set, the high watermark (every acks=all produce) waits for it, so it copies at full
    speed, as Kafka throttles only replicas outside the in-sync set."""
    spec = meta.get("spec", {})
    if spec.get("target") is None or spu_id in spec.get("moving_from", ()):
        return 0
    if spu_id in meta.get("status", {}).get("isr", ()):
        return 0
    return int(spec.get("throttle", 0))


class MoveThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens = 0.0
        self._at = clock()

    def delay(self, nbytes: int, rate: int) -> float:
        """Take ``nbytes`` at ``rate`` bytes/s; the seconds to wait before copying more."""
        if rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(float(rate), self._tokens + (now - self._at) * rate) - nbytes
        self._at = now
        return max(0.0, -self._tokens / rate)
