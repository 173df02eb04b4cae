"""Did a queue (Kafka-like) history lose, duplicate, reorder or invent records? A pure
function of the history (jepsen/queue_history.py), after Jepsen's Kafka/queue analyses.

Every send carries a value unique to the run, so a value names one record and each read
(an ``ok`` poll or final read: a list of ``(offset, value)`` pairs of one partition, the
``key``) tells where records sit. The final reads happen after healing and return whole
logs. Anomalies, each counted in ``counts`` with up to ``EXAMPLES_MAX`` ``examples``:

- **lost**: a send was acknowledged but no read ever returned its value, although some read
  should have: the key had a final read (a complete log), or some read of the key reached the
  send's offset or beyond it. Also lost: an acknowledged value that earlier reads returned but
  the key's final read does not hold: the record was there and is gone (a leader that came back
  with an empty disk and made its followers truncate, issue 15). Its example carries
  ``read_at``, where it was read.
- **unseen**: a send was acknowledged but no read ever returned its value, whether or not one
  should have. After final reads of every key, every unseen value is lost; a lost value that
  was read once and then vanished is not unseen.
- **duplicate**: one value read at two or more different (key, offset) positions.
- **inconsistent_offsets**: a (key, offset) position that holds two different values: two
  reads disagree, an acknowledged send's offset holds another value in some read, or two
  acknowledgements name it. Counted once per position.
- **nonmonotonic_send**: one process's acknowledged sends to one key, in the order they
  completed, got offsets that do not strictly increase. Counted per offending send.
- **nonmonotonic_poll**: inside one poll, or from one poll to the same process's next poll of
  the same key, an offset is not above the one before (it went back or repeated). A consumer
  that re-seeks must do so as a fresh process.
- **poll_skip**: inside one poll, or from one poll to the same process's next poll of the
  same key, the offset jumped over offsets where a record exists. Offsets are dense in Kolk's
  logs except where no record exists, and an offset exists iff some read returned a value
  there. The first poll of a key by a process may start anywhere.
- **aborted_read**: a read returned a value whose send failed (``fail``: certainly did not
  happen). Counted once per value.

A send whose outcome is unknown (``info``, or never completed) may or may not have happened:
seeing it is fine and never seeing it is fine. ``valid`` is False iff any count is above 0.

``stats`` also splits the lost values of each writer process, its acknowledged sends taken in
completion order (all keys together), into **lost_prefix** (before the writer's first value
that some read returned and that is not lost), **lost_postfix** (after its last one) and
**lost_middle** (between); when no such value exists, all of its lost values are prefix. The split
has examples too. ``stats`` counts values read that no send ever carried
(``values_never_sent``) and acknowledged values read, but never at their acknowledged offset,
which no read shows holding anything else (``ack_offset_unread``): suspect, not anomalies.

Cost: one pass over the operations and one over the pairs read, in dicts and sets; memory
is linear in the distinct values and positions. A process's operations are ordered by their
invoke index (a process has one operation outstanding, so that is also completion order).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from operator import attrgetter
from typing import Any, Hashable, Iterable

from jepsen.queue_history import Event, Op, pair

ANOMALIES: tuple[str, ...] = (
    "lost", "unseen", "duplicate", "inconsistent_offsets",
    "nonmonotonic_send", "nonmonotonic_poll", "poll_skip", "aborted_read",
)
LOST_SPLIT: tuple[str, ...] = ("lost_prefix", "lost_middle", "lost_postfix")
EXAMPLES_MAX = 10

Pos = tuple[int, int]  # (key, offset)
_NONE: Any = object()


class Tally:
    """Anomaly counts and up to EXAMPLES_MAX examples of each (shared by the group checker)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.counts: dict[str, int] = dict.fromkeys(names, 0)
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, name: str, example: dict[str, Any]) -> None:
        self.counts[name] += 1
        shown = self.examples.setdefault(name, [])
        if len(shown) < EXAMPLES_MAX:
            shown.append(example)


def check_queue(events_or_ops: Iterable[Event] | Iterable[Op]) -> dict[str, Any]:
    """Judge a queue history, given as events (paired here) or as ops. Returns
    ``{"valid", "counts", "examples", "stats"}`` (see the module docstring)."""
    items = list(events_or_ops)
    ops: list[Op] = pair(items) if items and isinstance(items[0], Event) else items  # type: ignore[assignment]
    ops = sorted(ops, key=attrgetter("index"))
    tally = Tally(ANOMALIES)
    split = Tally(LOST_SPLIT)
    outcomes = {f: dict.fromkeys(("ok", "fail", "info"), 0) for f in ("send", "poll", "final")}

    sent: dict[Any, Op] = {}  # value -> its send
    acked: list[Op] = []
    reads: list[Op] = []
    final_keys: set[int] = set()
    in_final: set[tuple[int, Any]] = set()  # (key, value) held by some final read of the key
    keys: set[int] = set()
    for op in ops:
        if not isinstance(op, Op):
            raise TypeError(f"expected Op or Event, got {op!r}")
        outcomes[op.f][op.type] += 1
        keys.add(op.key)
        if op.f == "send":
            if op.value in sent:
                raise ValueError(f"value {op.value!r} sent twice (ops {sent[op.value].index} and {op.index})")
            sent[op.value] = op
            if op.type == "ok":
                acked.append(op)
        elif op.type == "ok":
            reads.append(op)
            if op.f == "final":
                final_keys.add(op.key)
                in_final.update((op.key, v) for _off, v in op.value)

    # Where did reads put each value, and what did they put at each position?
    at: dict[Pos, Any] = {}  # position -> first value read there
    at_more: dict[Pos, set[Any]] = {}  # position -> all values read there, when reads disagree
    where: dict[Any, Pos] = {}  # value -> first position it was read at
    where_more: dict[Any, set[Pos]] = {}  # value -> all its positions, when more than one
    observations = 0
    for op in reads:
        k = op.key
        observations += len(op.value)
        for off, v in op.value:
            pos = (k, off)
            w = at.setdefault(pos, v)
            if w != v:
                at_more.setdefault(pos, {w}).add(v)
            p = where.setdefault(v, pos)
            if p != pos:
                where_more.setdefault(v, {p}).add(pos)
    offsets: dict[int, list[int]] = {}  # key -> sorted offsets some read saw a value at
    for k, off in at:
        offsets.setdefault(k, []).append(off)
    for offs in offsets.values():
        offs.sort()

    for v, positions in where_more.items():
        tally.add("duplicate", {"value": v, "positions": sorted(positions)})

    # Positions holding two values: reads disagree, or an acknowledgement disagrees.
    ack_at: dict[Pos, list[Any]] = {}
    bad: set[Pos] = set(at_more)
    for op in acked:
        pos = (op.key, op.offset)
        claims = ack_at.setdefault(pos, [])  # type: ignore[arg-type]
        claims.append(op.value)
        if len(claims) > 1 or at.get(pos, op.value) != op.value:  # type: ignore[arg-type]
            bad.add(pos)  # type: ignore[arg-type]
    for pos in sorted(bad):
        read = at_more.get(pos) or ({at[pos]} if pos in at else set())
        tally.add("inconsistent_offsets", {"key": pos[0], "offset": pos[1], "read": _sorted(read),
                                           "acked": _sorted(ack_at.get(pos, ()))})

    never_sent = 0
    info_seen = 0
    for v, pos in where.items():
        op = sent.get(v)
        if op is None:
            never_sent += 1
        elif op.type == "fail":
            tally.add("aborted_read", {"value": v, "key": pos[0], "offset": pos[1], "send": op.index})
        elif op.type == "info":
            info_seen += 1

    # Acknowledged but never read: unseen, and lost when a read should have returned it.
    max_read = {k: offs[-1] for k, offs in offsets.items()}
    by_writer: dict[int, list[Op]] = {}
    lost: set[Any] = set()
    ack_offset_unread = 0
    for op in acked:
        by_writer.setdefault(op.process, []).append(op)
        v = op.value
        example = {"value": v, "key": op.key, "offset": op.offset, "process": op.process, "send": op.index}
        if v in where:
            if op.key in final_keys and (op.key, v) not in in_final:
                lost.add(v)  # read once, gone from the complete log after healing
                tally.add("lost", dict(example, read_at=where[v]))
                continue
            pos = (op.key, op.offset)
            if where[v] != pos and pos not in where_more.get(v, ()) and pos not in at:
                ack_offset_unread += 1
            continue
        tally.add("unseen", example)
        if op.key in final_keys or max_read.get(op.key, -1) >= op.offset:  # type: ignore[operator]
            lost.add(v)
            tally.add("lost", example)

    # Lost values of each writer: before its first value read, after its last, or between.
    for process, sends in by_writer.items():
        if not any(op.value in lost for op in sends):
            continue
        seen_at = [i for i, op in enumerate(sends) if op.value in where and op.value not in lost]
        first = seen_at[0] if seen_at else len(sends)
        last = seen_at[-1] if seen_at else len(sends)
        for i, op in enumerate(sends):
            if op.value in lost:
                part = "lost_prefix" if i < first else "lost_postfix" if i > last else "lost_middle"
                split.add(part, {"value": op.value, "key": op.key, "offset": op.offset, "process": process})

    # Each process's acknowledged offsets per key must strictly increase.
    last_send: dict[tuple[int, int], Op] = {}
    for op in acked:
        pk = (op.process, op.key)
        prev = last_send.get(pk)
        if prev is not None and op.offset <= prev.offset:  # type: ignore[operator]
            tally.add("nonmonotonic_send", {"process": op.process, "key": op.key,
                                            "values": [prev.value, op.value], "offsets": [prev.offset, op.offset]})
        last_send[pk] = op

    # Each process's polls of a key must go forward, one existing offset at a time.
    last_poll: dict[tuple[int, int], int] = {}
    for op in reads:
        if op.f != "poll":
            continue
        pk = (op.process, op.key)
        prev = last_poll.get(pk)
        within = False
        for off, _ in op.value:
            if prev is not None:
                if off <= prev:
                    tally.add("nonmonotonic_poll", {"process": op.process, "key": op.key, "poll": op.index,
                                                    "offsets": [prev, off], "within_poll": within})
                elif off > prev + 1:
                    offs = offsets[op.key]
                    lo, hi = bisect_right(offs, prev), bisect_left(offs, off)
                    if hi > lo:
                        tally.add("poll_skip", {"process": op.process, "key": op.key, "poll": op.index,
                                                "offsets": [prev, off], "within_poll": within,
                                                "skipped": hi - lo, "skipped_offsets": offs[lo:min(hi, lo + 10)]})
            prev = off
            within = True
        if prev is not None:
            last_poll[pk] = prev

    info_sends = outcomes["send"]["info"]
    stats: dict[str, Any] = {
        "ops": outcomes,
        "keys": len(keys),
        "final_keys": len(final_keys),
        "acknowledged": len(acked),
        "observations": observations,
        "values_read": len(where),
        "info_sends_seen": info_seen,
        "info_sends_unseen": info_sends - info_seen,
        "values_never_sent": never_sent,
        "ack_offset_unread": ack_offset_unread,
        **split.counts,
    }
    examples = {**tally.examples, **split.examples}
    return {"valid": not any(tally.counts.values()), "counts": tally.counts, "examples": examples, "stats": stats}


def _sorted(values: Iterable[Hashable]) -> list[Any]:
    """Values sorted, or sorted by repr when they do not compare (mixed JSON scalars)."""
    values = list(values)
    try:
        return sorted(values)  # type: ignore[type-var]
    except TypeError:
        return sorted(values, key=repr)
