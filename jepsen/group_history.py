"""The history of a consumer-group workload (jepsen/group_workload.py), as typed values, and the
JSON lines it is stored as. Pure: no clock, no I/O beyond reading and writing a file.

Times are seconds of ``time.monotonic()`` since the run started. CLOCK_MONOTONIC is one clock for
every process of a host, so the runner and its member processes put their events on one time
line. A **member** is one incarnation of a group consumer process (``"c2.3"``: slot 2, third
start); a restarted slot is a new member.

- :class:`Send`: a producer's send of a value unique to the run: ``ok`` (acknowledged, with its
  offset), ``fail`` (certainly not written) or ``info`` (unknown).
- :class:`Delivery`: a record the consumer handed to the member's application.
- :class:`Change`: an ownership change seen by the member: ``assigned``, ``revoked``, ``lost``
  (from the consumer's callbacks, with the generation it passed), ``closing`` (the member stops
  reading and closes: ends every interval it holds), and ``killed`` (recorded by the runner once
  the kill -9 has been waited for: ends every interval). ``partitions`` is empty for the last two.
- :class:`Commit`: one ``commit(offsets)`` the member made (offset = the NEXT offset to read),
  invoke and completion: ``ok`` (acknowledged), ``fail`` (refused: it did not happen), ``info``
  (unknown: the member was killed or timed out waiting for the answer; it may have happened).

A member process writes its own events as JSON lines (:func:`member_lines` reads them back,
ignoring a last line torn by kill -9); :func:`dumps`/:func:`loads` store a whole history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

ChangeKind = Literal["assigned", "revoked", "lost", "closing", "killed"]
CHANGE_KINDS: tuple[str, ...] = ("assigned", "revoked", "lost", "closing", "killed")
OUTCOMES: tuple[str, ...] = ("ok", "fail", "info")


@dataclass(frozen=True, slots=True)
class Send:
    value: int
    partition: int
    outcome: str  # ok | fail | info
    offset: int | None = None  # of an ok send


@dataclass(frozen=True, slots=True)
class Delivery:
    time: float
    member: str
    partition: int
    offset: int
    value: int


@dataclass(frozen=True, slots=True)
class Change:
    time: float
    member: str
    kind: ChangeKind
    partitions: tuple[int, ...] = ()
    generation: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in CHANGE_KINDS:
            raise ValueError(f"unknown change kind {self.kind!r}; expected one of {CHANGE_KINDS}")


@dataclass(frozen=True, slots=True)
class Commit:
    member: str
    offsets: tuple[tuple[int, int], ...]  # (partition, next offset to read)
    invoke_time: float
    complete_time: float | None
    outcome: str  # ok | fail | info
    error: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown commit outcome {self.outcome!r}; expected one of {OUTCOMES}")


@dataclass
class GroupHistory:
    sends: list[Send] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    end_time: float = float("inf")  # intervals still open end here

    def extend(self, other: GroupHistory) -> None:
        self.sends += other.sends
        self.deliveries += other.deliveries
        self.changes += other.changes
        self.commits += other.commits


# ---------------------------------------------------------------- a member process's own lines

def member_lines(member: str, lines: Iterable[str], t0: float) -> GroupHistory:
    """The events a member process wrote (one JSON object per line, times in raw monotonic
    seconds, shifted here by ``t0``). A line that does not parse is accepted only as the last
    one (kill -9 may cut a write short); anywhere else it is an error naming the line. A commit
    invoked and never completed is ``info``."""
    out = GroupHistory()
    pending: dict[int, tuple[float, tuple[tuple[int, int], ...]]] = {}
    rows = list(lines)
    for number, line in enumerate(rows, start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            _member_event(member, r, r["t"] - t0, out, pending)
        except (KeyError, TypeError, ValueError) as e:
            if number == len(rows) and not line.endswith("\n"):
                break  # torn by kill -9
            raise ValueError(f"member {member} line {number}: {e}") from e
    for invoke_time, offsets in pending.values():
        out.commits.append(Commit(member, offsets, invoke_time, None, "info"))
    return out


def _member_event(member: str, r: dict[str, Any], t: float, out: GroupHistory,
                  pending: dict[int, tuple[float, tuple[tuple[int, int], ...]]]) -> None:
    kind = r["k"]
    if kind == "deliver":
        out.deliveries += [Delivery(t, member, int(p), int(o), int(v)) for p, o, v in r["recs"]]
    elif kind in ("assigned", "revoked", "lost", "closing"):
        out.changes.append(Change(t, member, kind, tuple(sorted(int(p) for p in r.get("ps", ()))), r.get("g")))
    elif kind == "commit":
        cid = int(r["id"])
        if r["phase"] == "invoke":
            pending[cid] = (t, tuple((int(p), int(o)) for p, o in r["offsets"]))
        else:
            invoke_time, offsets = pending.pop(cid)
            out.commits.append(Commit(member, offsets, invoke_time, t, r["phase"], r.get("error")))
    else:
        raise ValueError(f"unknown event kind {kind!r}")


# ---------------------------------------------------------------- a whole history on disk

def dumps(h: GroupHistory) -> str:
    """One JSON object per line, tagged by ``type``; the last line holds ``end_time``."""
    lines = [json.dumps({"type": "send", "value": s.value, "partition": s.partition, "outcome": s.outcome,
                         "offset": s.offset}) for s in h.sends]
    lines += [json.dumps({"type": "deliver", "time": d.time, "member": d.member, "partition": d.partition,
                          "offset": d.offset, "value": d.value}) for d in h.deliveries]
    lines += [json.dumps({"type": "change", "time": c.time, "member": c.member, "kind": c.kind,
                          "partitions": list(c.partitions), "generation": c.generation}) for c in h.changes]
    lines += [json.dumps({"type": "commit", "member": c.member, "offsets": [list(x) for x in c.offsets],
                          "invoke_time": c.invoke_time, "complete_time": c.complete_time, "outcome": c.outcome,
                          "error": c.error}) for c in h.commits]
    end = None if h.end_time == float("inf") else h.end_time
    lines.append(json.dumps({"type": "end", "time": end}))
    return "".join(line + "\n" for line in lines)


def loads(text: str) -> GroupHistory:
    h = GroupHistory()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            t = r.pop("type")
            if t == "send":
                h.sends.append(Send(**r))
            elif t == "deliver":
                h.deliveries.append(Delivery(**r))
            elif t == "change":
                h.changes.append(Change(**{**r, "partitions": tuple(r["partitions"])}))
            elif t == "commit":
                h.commits.append(Commit(**{**r, "offsets": tuple(tuple(x) for x in r["offsets"])}))
            elif t == "end":
                h.end_time = float("inf") if r["time"] is None else r["time"]
            else:
                raise ValueError(f"unknown type {t!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"line {number}: {e}") from e
    return h
