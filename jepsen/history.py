"""The history of a register workload: what each client asked, when, and what it was told.

Glossary (Jepsen's words):

- An **operation** is one request by one process on one key: ``write(v)``, ``read`` (which
  returns a value) or ``cas(expected, new)`` (compare-and-set). It has a **call time** (when
  the client invoked it) and a **return time** (when the client learnt its outcome). Times are
  any comparable numbers, usually monotonic seconds of the machine running the clients.
- The **outcome** is ``ok`` (it happened, at some moment between call and return), ``fail``
  (it certainly did not happen: the server refused it, or a cas found another value) or
  ``info`` (unknown: a timeout, a dropped connection). An ``info`` operation may take effect
  at any moment after its call, even long after the client gave up, or never; so checkers
  treat its return time as +infinity (:attr:`Operation.effective_return_time`). An ``info``
  read tells nothing and checkers drop it.
- A history is recorded as **events**: an ``invoke`` when a process calls, then one
  completion (``ok``, ``fail`` or ``info``) from the same process. :func:`history_from_events`
  pairs them into operations; an invoke that never completed (the run ended, the client
  crashed) becomes an ``info`` operation with no return time.

Values must be hashable (checkers use them as model states); JSON arrays load as tuples. The
value of a ``cas`` is the pair ``(expected, new)``; the value of a ``read`` is what it
returned (``None`` for a register never written, and for an ``info`` read).

On disk a history is JSON lines, one operation per line, in call order::

    {"process": 1, "key": "x", "kind": "write", "value": 3, "call_time": 0.5, "return_time": 0.7, "outcome": "ok"}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Literal

Kind = Literal["write", "read", "cas"]
Outcome = Literal["ok", "fail", "info"]
EventType = Literal["invoke", "ok", "fail", "info"]

KINDS: tuple[str, ...] = ("write", "read", "cas")
OUTCOMES: tuple[str, ...] = ("ok", "fail", "info")


@dataclass(frozen=True, slots=True)
class Operation:
    """One completed (or given-up-on) request. ``return_time`` is ``None`` only for an ``info``
    operation whose completion was never recorded."""

    process: Hashable
    key: Hashable
    kind: Kind
    value: Any
    call_time: float
    return_time: float | None
    outcome: Outcome = "ok"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if self.kind == "cas" and not (isinstance(self.value, tuple) and len(self.value) == 2):
            raise ValueError(f"a cas value is the pair (expected, new), got {self.value!r}")
        try:
            hash(self.value)
        except TypeError:
            raise TypeError(f"operation values must be hashable, got {self.value!r}") from None
        if self.return_time is None:
            if self.outcome != "info":
                raise ValueError(f"an {self.outcome} operation needs a return time")
        elif self.return_time < self.call_time:
            raise ValueError(f"returned at {self.return_time} before its call at {self.call_time}")

    @property
    def effective_return_time(self) -> float:
        """The last moment the operation may take effect: +infinity when the outcome is unknown."""
        if self.outcome == "info":
            return math.inf
        assert self.return_time is not None
        return self.return_time

    def describe(self) -> str:
        """``p1 cas 1->2 [0.5, 0.7] ok``: the operation in one line of a report."""
        if self.kind == "cas":
            what = f"cas {self.value[0]!r}->{self.value[1]!r}"
        else:
            what = f"{self.kind} {self.value!r}"
        ret = "?" if self.return_time is None else repr(self.return_time)
        return f"p{self.process} {what} [{self.call_time!r}, {ret}] {self.outcome}"


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a running history: a process invoking an operation or learning its outcome.
    For a read, the value is in the completion; for a write or cas, in the invoke."""

    process: Hashable
    type: EventType
    key: Hashable
    kind: Kind
    value: Any
    time: float


def history_from_events(events: Iterable[Event]) -> list[Operation]:
    """Pair each invoke with the next completion by the same process, in invoke order.

    A process has at most one operation outstanding (Jepsen's rule). An invoke with no
    completion becomes an ``info`` operation with no return time.
    """
    pending: dict[Hashable, Event] = {}
    slot: dict[Hashable, int] = {}  # process -> index in ``ops`` of its pending operation
    ops: list[Operation | None] = []
    for ev in events:
        if ev.type == "invoke":
            if ev.process in pending:
                raise ValueError(f"process {ev.process!r} invoked at {ev.time} with an operation outstanding")
            pending[ev.process] = ev
            slot[ev.process] = len(ops)
            ops.append(None)
            continue
        if ev.type not in OUTCOMES:
            raise ValueError(f"unknown event type {ev.type!r}")
        inv = pending.pop(ev.process, None)
        if inv is None:
            raise ValueError(f"process {ev.process!r} completed at {ev.time} without an invoke")
        if (inv.key, inv.kind) != (ev.key, ev.kind):
            raise ValueError(f"process {ev.process!r} invoked {inv.kind} {inv.key!r} "
                             f"but completed {ev.kind} {ev.key!r}")
        value = inv.value
        if inv.kind == "read":
            value = ev.value if ev.type == "ok" else None
        ops[slot.pop(ev.process)] = Operation(
            inv.process, inv.key, inv.kind, _freeze(value), inv.time, ev.time, ev.type
        )
    for process, inv in pending.items():
        value = None if inv.kind == "read" else inv.value
        ops[slot[process]] = Operation(process, inv.key, inv.kind, _freeze(value), inv.time, None, "info")
    return [op for op in ops if op is not None]


def dumps_history(history: Iterable[Operation]) -> str:
    """The history as JSON lines (one operation per line, each line ending in a newline)."""
    lines = []
    for op in history:
        record = {
            "process": op.process,
            "key": op.key,
            "kind": op.kind,
            "value": op.value,
            "call_time": op.call_time,
            "return_time": op.return_time,
            "outcome": op.outcome,
        }
        lines.append(json.dumps(record, allow_nan=False) + "\n")
    return "".join(lines)


def loads_history(text: str) -> list[Operation]:
    """Parse JSON lines written by :func:`dumps_history`; blank lines are skipped."""
    ops = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ops.append(Operation(
                _freeze(r["process"]), _freeze(r["key"]), r["kind"], _freeze(r["value"]),
                r["call_time"], r["return_time"], r["outcome"],
            ))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"line {number}: {e}") from e
    return ops


def save_history(path: str | os.PathLike[str], history: Iterable[Operation]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps_history(history))


def load_history(path: str | os.PathLike[str]) -> list[Operation]:
    with open(path, encoding="utf-8") as f:
        return loads_history(f.read())


def _freeze(value: Any) -> Any:
    """JSON arrays (and any list) become tuples, so values are hashable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
