"""The history of a queue workload (Jepsen's Kafka test): sends to partitions, polls of them,
and final reads of every partition after the faults are healed.

A history is a list of **events**, in the order they happened, each either an ``invoke`` (a
process starts an operation) or its completion: ``ok`` (it happened), ``fail`` (it certainly
did not happen) or ``info`` (unknown: a timeout, a dropped connection; it may take effect
later, or never). A process has at most one operation outstanding, and a process that got
``info`` is retired: its next operation could not be ordered after the unknown one, so the
harness must carry on with a fresh process id (:meth:`Recorder.retired`).

Operations (``f``), each on one partition (``key``, an int):

- ``send``: the invoke's value is the int sent, unique across the whole run; an ``ok``
  completion's value is ``[value, offset]``, the offset the cluster assigned.
- ``poll``: the invoke's value is null; an ``ok`` completion's value is the list of
  ``[offset, value]`` pairs the poll returned, in order. A consumer process polls one key at
  a time, but may poll several keys over the run.
- ``final``: after healing, a fresh process reads a partition from offset 0 to its end; an
  ``ok`` completion's value is the complete log as ``[offset, value]`` pairs.

On disk a history is JSON lines, one event per line::

    {"index": 0, "time": 0.5, "process": 1, "type": "invoke", "f": "send", "key": 0, "value": 7, "node": "n1", "error": null}
    {"index": 1, "time": 0.6, "process": 1, "type": "ok", "f": "send", "key": 0, "value": [7, 12], "node": "n1", "error": null}

``index`` numbers the events from 0; ``time`` is monotonic seconds (a :class:`Recorder`
counts from its creation). JSON arrays load as tuples, so event values are hashable.
:func:`pair` turns events into :class:`Op` s, one per invoke.
"""

from __future__ import annotations

import json
import os
import threading
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

EventType = Literal["invoke", "ok", "fail", "info"]
F = Literal["send", "poll", "final"]

TYPES: tuple[str, ...] = ("invoke", "ok", "fail", "info")
COMPLETIONS: tuple[str, ...] = ("ok", "fail", "info")
FS: tuple[str, ...] = ("send", "poll", "final")
FIELDS: tuple[str, ...] = ("index", "time", "process", "type", "f", "key", "value", "node", "error")


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history. Lists in ``value`` are stored as tuples."""

    index: int
    time: float
    process: int
    type: EventType
    f: F
    key: int
    value: Any = None
    node: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown event type {self.type!r}; expected one of {TYPES}")
        if self.f not in FS:
            raise ValueError(f"unknown f {self.f!r}; expected one of {FS}")
        if isinstance(self.value, (list, tuple)):
            object.__setattr__(self, "value", _freeze(self.value))

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


@dataclass(frozen=True, slots=True)
class Op:
    """An invoke paired with its completion.

    ``value`` is, for a send, the value sent; for an ``ok`` poll or final, the tuple of
    ``(offset, value)`` pairs read; otherwise ``None``. ``offset`` is the offset an ``ok`` send
    was assigned. An invoke never completed is an ``info`` op with ``complete_index`` (and
    ``complete_time``) ``None``; ``node`` is the invoke's, ``error`` the completion's.
    """

    index: int  # of the invoke event
    process: int
    f: F
    key: int
    type: Literal["ok", "fail", "info"]
    value: Any
    offset: int | None
    invoke_time: float
    complete_index: int | None
    complete_time: float | None
    node: str | None = None
    error: str | None = None


def pair(events: Iterable[Event]) -> list[Op]:
    """Pair each invoke with the next completion by the same process; ops in invoke order.

    Raises ``ValueError`` on a second invoke with one outstanding, a completion with no
    invoke, a completion of another f or key, or a malformed completion value.
    """
    pending: dict[int, Event] = {}
    slot: dict[int, int] = {}  # process -> index in ``ops`` of its pending op
    ops: list[Op | None] = []
    for ev in events:
        if ev.type == "invoke":
            if ev.process in pending:
                raise ValueError(f"event {ev.index}: process {ev.process} invoked with an operation outstanding")
            pending[ev.process] = ev
            slot[ev.process] = len(ops)
            ops.append(None)
            continue
        inv = pending.pop(ev.process, None)
        if inv is None:
            raise ValueError(f"event {ev.index}: process {ev.process} completed without an invoke")
        ops[slot.pop(ev.process)] = _op(inv, ev)
    for process, inv in pending.items():
        ops[slot[process]] = _op(inv, None)
    return [op for op in ops if op is not None]


def _op(inv: Event, comp: Event | None) -> Op:
    if comp is None:
        value = inv.value if inv.f == "send" else None
        return Op(inv.index, inv.process, inv.f, inv.key, "info", value, None,
                  inv.time, None, None, inv.node, None)
    offset = _check_completion(inv, comp.type, comp.value, comp.index)
    if inv.f == "send":
        value = inv.value
    else:
        value = comp.value if comp.type == "ok" else None
    return Op(inv.index, inv.process, inv.f, inv.key, comp.type, value, offset,
              inv.time, comp.index, comp.time, inv.node, comp.error)


def _check_completion(inv: Event, type: str, value: Any, where: int | None) -> int | None:
    """Validate a completion of ``inv``; returns the offset of an ``ok`` send."""
    at = f"event {where}" if where is not None else f"completion of event {inv.index}"
    if type not in COMPLETIONS:
        raise ValueError(f"{at}: not a completion type: {type!r}")
    if type != "ok":
        return None
    if inv.f == "send":
        if not (isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == inv.value
                and isinstance(value[1], int)):
            raise ValueError(f"{at}: an ok send of {inv.value!r} completes with [value, offset], got {value!r}")
        return value[1]
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], int) for p in value):
        raise ValueError(f"{at}: an ok {inv.f} completes with a list of [offset, value], got {value!r}")
    return None


@dataclass
class Recorder:
    """Records events in memory, thread-safe, handing out indexes and times.

    The list is not bounded: a run is bounded by its duration, so it holds about (operation
    rate x seconds x 2) events; write it out with :func:`write_events` at the end. Times are
    ``clock()`` seconds since the recorder was created.
    """

    clock: Callable[[], float] = _time.monotonic
    _events: list[Event] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _pending: dict[int, Event] = field(default_factory=dict, init=False, repr=False)  # id -> invoke
    _busy: set[int] = field(default_factory=set, init=False, repr=False)  # processes with an op out
    _retired: set[int] = field(default_factory=set, init=False, repr=False)
    _start: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._start = self.clock()

    def invoke(self, process: int, f: F, key: int, value: Any = None, node: str | None = None) -> int:
        """Record an invoke; returns its id (its event index) for :meth:`complete`. Raises
        ``ValueError`` if ``process`` is retired or has an operation outstanding."""
        with self._lock:
            if process in self._retired:
                raise ValueError(f"process {process} is retired (it got info); use a fresh process")
            if process in self._busy:
                raise ValueError(f"process {process} already has an operation outstanding")
            ev = self._append(process, "invoke", f, key, value, node, None)
            self._busy.add(process)
            self._pending[ev.index] = ev
            return ev.index

    def complete(self, id: int, type: EventType, value: Any = None, error: str | None = None) -> Event:
        """Record the completion (``ok``, ``fail`` or ``info``) of the invoke ``id``. An
        ``info`` completion retires the process."""
        with self._lock:
            inv = self._pending.get(id)
            if inv is None:
                raise ValueError(f"no outstanding invoke with id {id}")
            _check_completion(inv, type, value, None)
            del self._pending[id]
            self._busy.discard(inv.process)
            if type == "info":
                self._retired.add(inv.process)
            return self._append(inv.process, type, inv.f, inv.key, value, inv.node, error)

    def retired(self, process: int) -> bool:
        """Did ``process`` get an ``info``? Then it must not be used again."""
        with self._lock:
            return process in self._retired

    def events(self) -> list[Event]:
        """A copy of the events so far, in index order."""
        with self._lock:
            return list(self._events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def _append(self, process: int, type: str, f: str, key: int, value: Any,
                node: str | None, error: str | None) -> Event:
        ev = Event(len(self._events), self.clock() - self._start, process, type, f, key,  # type: ignore[arg-type]
                   value, node, error)
        self._events.append(ev)
        return ev


def write_events(path: str | os.PathLike[str], events: Iterable[Event]) -> None:
    """Write ``events`` as JSON lines (one per line, each ending in a newline)."""
    with open(path, "w", encoding="utf-8") as out:
        for ev in events:
            out.write(json.dumps(ev.to_json(), allow_nan=False) + "\n")


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """Read JSON lines written by :func:`write_events`; blank lines are skipped."""
    events = []
    with open(path, encoding="utf-8") as src:
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                events.append(Event(r["index"], r["time"], r["process"], r["type"], r["f"], r["key"],
                                    r.get("value"), r.get("node"), r.get("error")))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: {e}") from e
    return events


def _freeze(value: Any) -> Any:
    """Lists (JSON arrays) become tuples, recursively, so values are hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value
