"""Is a history of key/value register operations linearizable? A pure function of the history.

A history is **linearizable** when every operation that took effect can be given one moment
between its call and its return such that, read in the order of those moments, the
operations are legal for a single register. Keys are independent registers, and
linearizability is compositional (Herlihy & Wing's locality, Porcupine's P-compositionality):
the history is linearizable iff each key's sub-history is, so :func:`check` splits by key and
searches each key on its own.

The register model: the initial value is ``None``; ``write(v)`` sets ``v``; a ``read`` is
legal iff it returned the current value; an ``ok`` ``cas(expected, new)`` is legal iff the
current value equals ``expected`` and then sets ``new``. Outcomes follow Jepsen:

- ``fail`` operations certainly did not happen and are left out (a failed write must never be
  seen; a failed cas changes nothing).
- ``info`` operations may have taken effect at any moment after their call, or never: the
  search may place them anywhere after their call (their return time is +infinity) or leave
  them out. An ``info`` read constrains nothing and is dropped.
- Equal times count as overlapping (a call at the very moment of another's return may be
  ordered either way), the lenient reading, as in Porcupine.

The search is Wing & Gong's, with Lowe's memoisation, as Porcupine implements it: the calls
and returns sorted by time form a doubly linked list; depth-first, the search takes the first
call entry whose operation is legal from the current state, *lifts* its call and return out of
the list and starts again from the head; reaching a return entry means that operation was not
placed before it returned, so the search backtracks (pops the last lifted operation, puts it
back, and tries the entry after it). A cache of (set of linearized operations as a bitset,
register value) prunes every branch already explored: two branches with the same placed set
and the same value have the same future. The history is linearizable when every ``ok``
operation has been lifted; it is not when the search backtracks past the first operation.

The search is exponential in the worst case, so it is bounded: after ``steps_max`` steps on a
key it stops and answers ``unknown`` for that key. The cache holds at most one entry per step,
so memory is bounded by the same limit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Sequence

from jepsen.history import Operation

# One search step is one visit of a list entry; a million take about half a second on a laptop.
STEPS_MAX_PER_KEY = 1_000_000
# A report shows at most this many operations of a prefix: the last ones, where it went wrong.
REPORT_PREFIX_OPS_MAX = 8

_NIL = -1
_HEAD = 0


class Verdict(enum.StrEnum):
    OK = "ok"
    NOT_LINEARIZABLE = "not-linearizable"
    UNKNOWN = "unknown"  # the search hit its step bound first


@dataclass(frozen=True)
class KeyResult:
    """The verdict on one key's register.

    ``linearization`` is, when the verdict is ``ok``, a witness: the operations that took
    effect in linearization order (``info`` operations that it leaves out never took effect).
    Otherwise it is the longest linearizable prefix the search found. ``unplaced`` is, when the
    key is not linearizable, the ``ok`` operations that real time allows next after that
    prefix, none of which is legal there (so each is a read or a cas: a write is always legal).
    ``state`` is the register value after ``linearization``.
    """

    key: Hashable
    verdict: Verdict
    linearization: tuple[Operation, ...]
    unplaced: tuple[Operation, ...]
    state: Any
    operations: int  # in the search: fail operations and info reads are not counted
    steps: int
    explanation: str

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


@dataclass(frozen=True)
class Result:
    """Per-key verdicts, in order of each key's first operation in the history."""

    keys: Mapping[Hashable, KeyResult] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        """``not-linearizable`` if any key is, else ``unknown`` if any key is, else ``ok``."""
        verdicts = {r.verdict for r in self.keys.values()}
        for v in (Verdict.NOT_LINEARIZABLE, Verdict.UNKNOWN):
            if v in verdicts:
                return v
        return Verdict.OK

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    @property
    def failures(self) -> list[KeyResult]:
        """The keys that are not ``ok`` (not linearizable, or unknown)."""
        return [r for r in self.keys.values() if not r.ok]

    def report(self) -> str:
        """A text a person can read: one line if all is well, else each failing key explained."""
        ops = sum(r.operations for r in self.keys.values())
        head = f"linearizability: {self.verdict} ({len(self.keys)} keys, {ops} operations)"
        return "\n\n".join([head] + [r.explanation for r in self.failures])


def check(history: Iterable[Operation], *, steps_max: int = STEPS_MAX_PER_KEY) -> Result:
    """Judge every key of ``history`` (in any order) independently; ``steps_max`` bounds the
    search of each key."""
    by_key: dict[Hashable, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    return Result({key: check_key(key, ops, steps_max=steps_max) for key, ops in by_key.items()})


def register_step(state: Any, op: Operation) -> tuple[bool, Any]:
    """The register model: is ``op`` legal when the register holds ``state``, and what does it
    hold after?"""
    if op.kind == "write":
        return True, op.value
    if op.kind == "read":
        return op.value == state, state
    expected, new = op.value
    return state == expected, new


def check_key(key: Hashable, history: Sequence[Operation], *, steps_max: int = STEPS_MAX_PER_KEY) -> KeyResult:
    """Search one register's history (every operation on ``key``) for a linearization."""
    if steps_max < 1:
        raise ValueError(f"steps_max must be at least 1, got {steps_max}")
    ops = [op for op in history if op.outcome != "fail" and not (op.outcome == "info" and op.kind == "read")]
    if any(op.key != key for op in ops):
        raise ValueError(f"check_key({key!r}) was given operations on other keys")
    n = len(ops)

    # The entry list: node 0 is the head; nodes 1..2n are calls and returns sorted by time,
    # calls before returns at equal times so that touching intervals overlap.
    entries = sorted(
        [(op.call_time, 0, i) for i, op in enumerate(ops)]
        + [(op.effective_return_time, 1, i) for i, op in enumerate(ops)]
    )
    size = 2 * n + 1
    nxt = list(range(1, size)) + [_NIL]
    prv = [_NIL] + list(range(size - 1))
    op_of = [_NIL] * size
    match = [_NIL] * size  # call node -> its return node; _NIL for return nodes
    call_node = [0] * n
    for node, (_, is_return, i) in enumerate(entries, start=1):
        op_of[node] = i
        if is_return:
            match[call_node[i]] = node
        else:
            call_node[i] = node
    is_info = [op.outcome == "info" for op in ops]

    def lift(entry: int) -> None:
        nxt[prv[entry]] = nxt[entry]
        prv[nxt[entry]] = prv[entry]
        ret = match[entry]
        nxt[prv[ret]] = nxt[ret]
        if nxt[ret] != _NIL:
            prv[nxt[ret]] = prv[ret]

    def unlift(entry: int) -> None:
        ret = match[entry]
        nxt[prv[ret]] = ret
        if nxt[ret] != _NIL:
            prv[nxt[ret]] = ret
        nxt[prv[entry]] = entry
        prv[nxt[entry]] = entry

    state: Any = None
    linearized = 0  # bit i set: ops[i] is placed
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []  # (call node lifted, state before it)
    best: list[int] = []
    best_state: Any = None
    steps = 0
    verdict = Verdict.OK
    entry = nxt[_HEAD]
    while entry != _NIL:
        if steps >= steps_max:
            verdict = Verdict.UNKNOWN
            break
        steps += 1
        ret = match[entry]
        if ret != _NIL:  # a call entry: try to place its operation now
            i = op_of[entry]
            legal, new_state = register_step(state, ops[i])
            if legal:
                new_linearized = linearized | (1 << i)
                seen = (new_linearized, new_state)
                if seen not in cache:
                    cache.add(seen)
                    stack.append((entry, state))
                    state, linearized = new_state, new_linearized
                    lift(entry)
                    if len(stack) > len(best):
                        best = [op_of[e] for e, _ in stack]
                        best_state = state
                    entry = nxt[_HEAD]
                    continue
            entry = nxt[entry]
        else:  # a return entry: its operation was not placed before it returned
            if is_info[op_of[entry]]:
                # Returns at +infinity sort last, so every ok operation is placed; the info
                # operations still in the list never took effect.
                break
            if not stack:
                verdict = Verdict.NOT_LINEARIZABLE
                break
            entry, state = stack.pop()
            linearized &= ~(1 << op_of[entry])
            unlift(entry)
            entry = nxt[entry]

    if verdict is Verdict.OK:
        order = tuple(ops[op_of[e]] for e, _ in stack)
        explanation = f"key {key!r} is linearizable ({n} operations, {steps} steps)"
        return KeyResult(key, verdict, order, (), state, n, steps, explanation)

    prefix = tuple(ops[i] for i in best)
    unplaced: tuple[Operation, ...] = ()
    if verdict is Verdict.NOT_LINEARIZABLE:
        unplaced = _next_candidates(ops, set(best))
        explanation = _explain_violation(key, ops, prefix, best_state, unplaced, steps)
    else:
        explanation = (
            f"key {key!r}: unknown: the search gave up after {steps} steps (steps_max) on "
            f"{n} operations; the longest linearizable prefix it found has {len(prefix)} of them"
            + _show_prefix(prefix)
        )
    return KeyResult(key, verdict, prefix, unplaced, best_state, n, steps, explanation)


def _next_candidates(ops: Sequence[Operation], placed: set[int]) -> tuple[Operation, ...]:
    """The unplaced ok operations that real time allows next: those called no later than the
    earliest return among the unplaced operations. (Info operations are left out: one that
    cannot go next may simply never have happened.)"""
    rest = [op for i, op in enumerate(ops) if i not in placed]
    deadline = min(op.effective_return_time for op in rest)
    stuck = (op for op in rest if op.outcome == "ok" and op.call_time <= deadline)
    return tuple(sorted(stuck, key=lambda op: op.call_time))


def _explain_violation(
    key: Hashable,
    ops: Sequence[Operation],
    prefix: tuple[Operation, ...],
    state: Any,
    unplaced: tuple[Operation, ...],
    steps: int,
) -> str:
    produced = {op.value if op.kind == "write" else op.value[1] for op in ops if op.kind != "read"}
    produced.add(None)
    lines = [
        f"key {key!r} is not linearizable ({len(ops)} operations, {steps} steps).",
        f"The longest linearizable prefix found has {len(prefix)} operations" + _show_prefix(prefix),
        f"after which the register holds {state!r}. None of these can take effect next:",
    ]
    for op in unplaced:
        if op.kind == "read":
            why = f"it read {op.value!r} but the register holds {state!r}"
            wanted = op.value
        elif op.kind == "cas":
            why = f"it expected {op.value[0]!r} but the register holds {state!r}"
            wanted = op.value[0]
        else:  # a write is always legal; the search never leaves one stuck here
            why = "legal here, but every order after it fails"
            wanted = None
        if wanted not in produced:
            why += f", and no write or cas sets {wanted!r}"
        lines.append(f"  {op.describe()}: {why}")
    return "\n".join(lines)


def _show_prefix(prefix: tuple[Operation, ...]) -> str:
    if not prefix:
        return ","
    shown = prefix[-REPORT_PREFIX_OPS_MAX:]
    lines = [":"]
    if len(prefix) > len(shown):
        lines.append(f"  ... {len(prefix) - len(shown)} earlier operations")
    lines += [f"  {op.describe()}" for op in shown]
    return "\n".join(lines)
