"""Did a consumer group deliver every record, keep its committed offsets moving forward, and never
let two members own a partition at once? A pure function of a :class:`GroupHistory`
(jepsen/group_history.py); docs/reliability.md, "Consumer groups".

One topic; partitions are ints. Anomalies, each counted in ``counts`` with up to
``EXAMPLES_MAX`` ``examples``:

- **lost**: an acknowledged send whose value no member was ever handed. The workload drains the
  group after the faults are healed, so every acknowledged value must have been delivered.
- **commit_backwards**: on one partition, an acknowledged commit X completed before another
  acknowledged commit Y was invoked (real-time order), yet X's offset is above Y's: the group's
  position went back. Commits that overlap in time may take effect in either order, so they are
  not compared (a commit answered while its member was frozen is recorded late).
- **start_after_commit**: a member's first record of a partition, in an ownership interval that
  began at time t, is at an offset above every commit of that partition that could have taken
  effect before t (acknowledged or unknown commits invoked before t; 0 when there is none, as the
  workload starts at the beginning). Records between the two were skipped by the group.
- **overlap**: two members own one partition at once. Member m owns p over the interval
  [assigned, end), end = the first of m's revoked (naming p), lost (naming p), closing, killed,
  or the end of the history. Two intervals of p overlap when each begins before the other ends
  (touching ends do not). The one exception: the earlier interval ended by ``lost`` (the member
  was removed while it could not heartbeat, e.g. frozen, and learnt it late), and the generation
  it last had (the lost event's, else its grant's) is lower than the generation the later owner
  was granted p in: a zombie of an older generation, fenced (its commits refused), never
  reading in the same generation as the new owner. Those are counted in ``stats`` as
  ``fenced_overlaps``.
- **unowned_delivery**: a member was handed a record of a partition it did not own then.
- **nonmonotonic_delivery** / **delivery_skip**: inside one ownership interval, a member's
  records of a partition went back or repeated, or jumped over offsets where a record exists
  (an offset exists iff some member was handed a record there or a send was acknowledged there).

``valid`` is False iff any count is above 0. Redelivery (a record handed out twice, to one
member or two) is at-least-once and no anomaly; ``stats`` counts it.

Cost: sorting the deliveries, changes and commits once; per partition, a sweep over commits and
one over intervals (quadratic only in the intervals that overlap one another).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any, Iterable

from jepsen.group_history import Change, Delivery, GroupHistory

from .queue import Tally

ANOMALIES: tuple[str, ...] = ("lost", "commit_backwards", "start_after_commit", "overlap",
                              "unowned_delivery", "nonmonotonic_delivery", "delivery_skip")
INF = float("inf")


@dataclass(frozen=True, slots=True)
class Interval:
    """Member ``member`` owned ``partition`` over [start, end)."""

    member: str
    partition: int
    start: float
    end: float
    grant_generation: int | None
    end_kind: str  # revoked | lost | closing | killed | end
    end_generation: int | None  # the generation of the event that ended it, when it has one

    @property
    def last_generation(self) -> int | None:
        return self.end_generation if self.end_generation is not None else self.grant_generation


def intervals(changes: Iterable[Change], end_time: float = INF) -> tuple[list[Interval], int]:
    """Ownership intervals from the members' changes (in time order; ties keep their order).
    Also returns how many changes named a partition the member did not hold (an ``assigned`` of
    one it holds, a ``revoked``/``lost`` of one it does not): ignored, counted in stats."""
    open_: dict[tuple[str, int], tuple[float, int | None]] = {}  # (member, p) -> (start, generation)
    out: list[Interval] = []
    odd = 0
    for c in sorted(changes, key=lambda c: c.time):
        if c.kind == "assigned":
            for p in c.partitions:
                if (c.member, p) in open_:
                    odd += 1
                else:
                    open_[(c.member, p)] = (c.time, c.generation)
            continue
        if c.kind in ("revoked", "lost"):
            held = c.partitions
        else:  # closing, killed: everything the member holds
            held = tuple(p for m, p in open_ if m == c.member)
        for p in held:
            got = open_.pop((c.member, p), None)
            if got is None:
                odd += 1
                continue
            out.append(Interval(c.member, p, got[0], c.time, got[1], c.kind, c.generation))
    for (m, p), (start, gen) in open_.items():
        out.append(Interval(m, p, start, end_time, gen, "end", None))
    return out, odd


def check_groups(h: GroupHistory) -> dict[str, Any]:
    """Judge a consumer-group history. Returns ``{"valid", "counts", "examples", "stats"}``."""
    tally = Tally(ANOMALIES)
    deliveries = sorted(h.deliveries, key=lambda d: d.time)
    ivs, odd_changes = intervals(h.changes, h.end_time)
    by_part: dict[int, list[Interval]] = {}
    for iv in ivs:
        by_part.setdefault(iv.partition, []).append(iv)
    for lst in by_part.values():
        lst.sort(key=lambda iv: (iv.start, iv.member))

    # lost: acknowledged values never handed to a member.
    delivered: dict[int, int] = {}
    for d in deliveries:
        delivered[d.value] = delivered.get(d.value, 0) + 1
    acked = [s for s in h.sends if s.outcome == "ok"]
    for s in acked:
        if s.value not in delivered:
            tally.add("lost", {"value": s.value, "partition": s.partition, "offset": s.offset})

    # Offsets known to exist, per partition (for delivery_skip).
    exists: dict[int, set[int]] = {}
    for d in deliveries:
        exists.setdefault(d.partition, set()).add(d.offset)
    for s in acked:
        if s.offset is not None:
            exists.setdefault(s.partition, set()).add(s.offset)
    existing = {p: sorted(offs) for p, offs in exists.items()}

    # Commits per partition: (invoke, complete, offset, outcome, member).
    commits: dict[int, list[tuple[float, float | None, int, str, str]]] = {}
    for c in h.commits:
        for p, off in c.offsets:
            commits.setdefault(p, []).append((c.invoke_time, c.complete_time, off, c.outcome, c.member))
    for p, cs in commits.items():
        _commit_order(p, cs, tally)

    # Deliveries inside intervals: ownership, order, and the start against the commits.
    fenced = 0
    by_member_part: dict[tuple[str, int], list[Delivery]] = {}
    for d in deliveries:
        by_member_part.setdefault((d.member, d.partition), []).append(d)
    member_ivs: dict[tuple[str, int], list[Interval]] = {}
    for iv in ivs:
        member_ivs.setdefault((iv.member, iv.partition), []).append(iv)
    for key, ds in by_member_part.items():
        owned = sorted(member_ivs.get(key, []), key=lambda iv: iv.start)
        _deliveries(key, ds, owned, existing.get(key[1], []), commits.get(key[1], []), tally)

    for p, lst in by_part.items():
        fenced += _overlaps(p, lst, tally)

    redelivered = sum(n - 1 for n in delivered.values() if n > 1)
    stats: dict[str, Any] = {
        "acknowledged": len(acked),
        "sends": {o: sum(1 for s in h.sends if s.outcome == o) for o in ("ok", "fail", "info")},
        "deliveries": len(deliveries),
        "values_delivered": len(delivered),
        "redeliveries": redelivered,
        "members": len({d.member for d in deliveries} | {c.member for c in h.changes}),
        "intervals": len(ivs),
        "interval_ends": {k: sum(1 for iv in ivs if iv.end_kind == k)
                          for k in ("revoked", "lost", "closing", "killed", "end")},
        "commits": {o: sum(1 for c in h.commits if c.outcome == o) for o in ("ok", "fail", "info")},
        "fenced_overlaps": fenced,
        "unmatched_changes": odd_changes,
    }
    return {"valid": not any(tally.counts.values()), "counts": tally.counts, "examples": tally.examples,
            "stats": stats}


def _commit_order(p: int, cs: list[tuple[float, float | None, int, str, str]], tally: Tally) -> None:
    """commit_backwards: an ok commit completed before an ok commit's invoke, at a higher offset."""
    done = sorted((c for c in cs if c[3] == "ok"), key=lambda c: c[1])  # type: ignore[arg-type, return-value]
    completes = [c[1] for c in done]
    best: list[tuple[int, tuple[float, float | None, int, str, str]]] = []  # running max by completion
    for c in done:
        if not best or c[2] > best[-1][0]:
            best.append((c[2], c))
        else:
            best.append(best[-1])
    for y in done:
        k = bisect_left(completes, y[0])  # commits that completed strictly before y was invoked
        if k and best[k - 1][0] > y[2]:
            x = best[k - 1][1]
            tally.add("commit_backwards", {"partition": p, "earlier": {"member": x[4], "offset": x[2],
                                                                       "completed": x[1]},
                                           "later": {"member": y[4], "offset": y[2], "invoked": y[0]}})


def _could_be_committed(cs: list[tuple[float, float | None, int, str, str]], t: float) -> int:
    """The highest offset a commit invoked before ``t`` could have set (refused ones excluded); 0
    when there is none."""
    return max((c[2] for c in cs if c[3] != "fail" and c[0] < t), default=0)


def _deliveries(key: tuple[str, int], ds: list[Delivery], owned: list[Interval], offs: list[int],
                cs: list[tuple[float, float | None, int, str, str]], tally: Tally) -> None:
    member, p = key
    starts = [iv.start for iv in owned]
    prev: dict[int, int] = {}  # interval index -> last offset handed out in it
    for d in ds:
        i = bisect_right(starts, d.time) - 1
        if i < 0 or d.time > owned[i].end:
            tally.add("unowned_delivery", {"member": member, "partition": p, "offset": d.offset, "time": d.time})
            continue
        iv = owned[i]
        last = prev.get(i)
        if last is None:
            bound = _could_be_committed(cs, iv.start)
            if d.offset > bound:
                skipped = offs[bisect_left(offs, bound):bisect_left(offs, d.offset)]
                if skipped:  # no record existed in between: nothing was skipped
                    tally.add("start_after_commit", {"member": member, "partition": p, "assigned": iv.start,
                                                     "first_offset": d.offset, "committed_at_most": bound,
                                                     "skipped": len(skipped)})
        elif d.offset <= last:
            tally.add("nonmonotonic_delivery", {"member": member, "partition": p, "offsets": [last, d.offset]})
        elif d.offset > last + 1:
            lo, hi = bisect_right(offs, last), bisect_left(offs, d.offset)
            if hi > lo:
                tally.add("delivery_skip", {"member": member, "partition": p, "offsets": [last, d.offset],
                                            "skipped": hi - lo})
        prev[i] = d.offset if last is None else max(last, d.offset)


def _overlaps(p: int, lst: list[Interval], tally: Tally) -> int:
    """Pairs of intervals of one partition that overlap; returns the fenced ones excused."""
    fenced = 0
    active: list[Interval] = []
    for b in lst:
        active = [a for a in active if a.end > b.start]
        for a in active:
            if a.member == b.member:
                continue
            if (a.end_kind == "lost" and a.last_generation is not None and b.grant_generation is not None
                    and a.last_generation < b.grant_generation):
                fenced += 1
                continue
            tally.add("overlap", {"partition": p,
                                  "first": {"member": a.member, "from": a.start, "to": a.end, "ended_by": a.end_kind,
                                            "generation": a.last_generation},
                                  "second": {"member": b.member, "from": b.start, "to": b.end,
                                             "generation": b.grant_generation}})
        active.append(b)
    return fenced
