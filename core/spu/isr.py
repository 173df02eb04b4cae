"""The leader's view of its followers, as pure functions (DESIGN.md §5, docs/replication.md).

The state they work on is owned by the replica state machine (core/spu/replica_state.py),
which calls them.

A partition leader keeps a :class:`FollowerProgress` per follower, updated by each
``replicaFetch``: the follower fetches from its log end offset, and everything below it is
fsynced there, so the fetch offset *is* the follower's durable LEO.

* :func:`high_watermark`: the smallest durable LEO over the in-sync set (the leader counts
  its own fsynced offset). A follower in the set whose LEO is not known yet (it has not
  fetched since this leader took over) holds the mark where it is.
* :func:`effective_isr`: the set the high watermark is computed over. It is the committed set
  plus the followers this leader has *asked* the SC to add: once the SC commits an addition,
  that follower may be elected, so the leader must count it before it learns of the commit
  (Kafka's KIP-497 "maximal ISR"). A removal counts only once committed.
* :func:`isr_shrink` / :func:`isr_expand`: which followers to ask the SC to drop (no fetch that
  reached the leader's end for ``lag_max_ms``) or to add back (caught up to the high
  watermark and past the start of this leader's epoch, so it has truncated any divergent tail).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass
class FollowerProgress:
    leo: int | None  # the follower's durable log end offset; None until it fetches from us
    caught_up_ms: int  # last time a fetch reached what the leader's end was at the fetch before
    last_fetch_ms: int | None = None
    leader_leo_at_last_fetch: int = 0

    def on_fetch(self, offset: int, leader_leo: int, now_ms: int) -> None:
        """Record a fetch from ``offset`` when the leader's log ends at ``leader_leo``.

        A follower counts as caught up when it has reached where the leader's log ended at its
        previous fetch: under steady load it never equals the moving end, yet it keeps up.
        """
        if offset >= leader_leo or offset >= self.leader_leo_at_last_fetch:
            self.caught_up_ms = now_ms
        self.leo = offset
        self.last_fetch_ms = now_ms
        self.leader_leo_at_last_fetch = leader_leo


def effective_isr(committed: Iterable[int], pending_adds: Iterable[int]) -> list[int]:
    out = list(committed)
    out.extend(r for r in pending_adds if r not in out)
    return out


def high_watermark(me: int, own_durable: int, isr: Iterable[int],
                   progress: Mapping[int, FollowerProgress]) -> int:
    """The smallest durable LEO over ``isr``; a member without known progress holds it at 0."""
    hw = own_durable
    for r in isr:
        if r == me:
            continue
        p = progress.get(r)
        if p is None or p.leo is None:
            return 0
        hw = min(hw, p.leo)
    return hw


def isr_shrink(me: int, isr: Iterable[int], progress: Mapping[int, FollowerProgress], now_ms: int,
               lag_max_ms: int) -> list[int]:
    """Followers in ``isr`` that have not caught up for ``lag_max_ms``."""
    out = []
    for r in isr:
        if r == me:
            continue
        p = progress.get(r)
        if p is None or now_ms - p.caught_up_ms > lag_max_ms:
            out.append(r)
    return out


def isr_expand(me: int, replicas: Iterable[int], isr: Iterable[int], progress: Mapping[int, FollowerProgress],
               high_watermark_: int, epoch_start: int, now_ms: int, lag_max_ms: int) -> list[int]:
    """Replicas outside ``isr`` that have caught up: at or past the high watermark and the
    offset where this leader's epoch began, and caught up within ``lag_max_ms``."""
    in_set = set(isr)
    out = []
    for r in replicas:
        if r == me or r in in_set:
            continue
        p = progress.get(r)
        if (p is not None and p.leo is not None and p.leo >= high_watermark_ and p.leo >= epoch_start
                and now_ms - p.caught_up_ms <= lag_max_ms):
            out.append(r)
    return out
