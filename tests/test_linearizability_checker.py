"""The register linearizability checker (jepsen/checkers/linearizability.py) and the history
model it reads (jepsen/history.py): hand-made histories with known verdicts, then properties
of histories recorded against a real sequential register."""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import sys
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jepsen.checkers.linearizability import (  # noqa: E402
    KeyResult,
    Verdict,
    check,
    check_key,
    register_step,
)
from jepsen.history import (  # noqa: E402
    Event,
    Operation,
    dumps_history,
    history_from_events,
    load_history,
    loads_history,
    save_history,
)


def w(p, v, call, ret, outcome="ok", key="x"):
    return Operation(p, key, "write", v, call, ret, outcome)


def r(p, v, call, ret, outcome="ok", key="x"):
    return Operation(p, key, "read", v, call, ret, outcome)


def cas(p, expected, new, call, ret, outcome="ok", key="x"):
    return Operation(p, key, "cas", (expected, new), call, ret, outcome)


OK, BAD = Verdict.OK, Verdict.NOT_LINEARIZABLE

CASES = [
    # (id, history, verdict)
    ("empty", [], OK),
    ("sequential", [w(0, 1, 0, 1), r(1, 1, 2, 3), w(0, 2, 4, 5), r(1, 2, 6, 7)], OK),
    ("read of the initial value before any write", [r(0, None, 0, 1), w(1, 1, 2, 3), r(0, 1, 4, 5)], OK),
    ("concurrent writes, later read sees the first", [w(0, 1, 0, 3), w(1, 2, 1, 4), r(2, 1, 5, 6)], OK),
    ("concurrent writes, later read sees the second", [w(0, 1, 0, 3), w(1, 2, 1, 4), r(2, 2, 5, 6)], OK),
    ("read during a write sees the old value", [w(0, 1, 0, 1), w(0, 2, 2, 5), r(1, 1, 3, 4)], OK),
    ("read during a write sees the new value", [w(0, 1, 0, 1), w(0, 2, 2, 5), r(1, 2, 3, 4)], OK),
    ("touching intervals overlap", [w(0, 1, 0, 1), r(1, None, 1, 2)], OK),
    ("stale read after a completed write", [w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5)], BAD),
    ("read of the initial value after a completed write", [w(0, 1, 0, 1), r(1, None, 2, 3)], BAD),
    ("read of a value never written", [w(0, 1, 0, 1), r(1, 7, 2, 3)], BAD),
    ("reads disagree on the order of two writes",
     [w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 1, 1, 2), r(2, 2, 3, 4), r(3, 2, 1, 2), r(3, 1, 3, 4)], BAD),
    ("info write that took effect", [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(2, 2, 4, 5)], OK),
    ("info write that never took effect", [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(2, 1, 4, 5)], OK),
    ("info write that took effect after the client gave up",
     [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(2, 1, 4, 5), r(2, 2, 6, 7)], OK),
    ("info write with no recorded return", [w(0, 1, 0, 1), w(1, 2, 2, None, "info"), r(2, 2, 9, 10)], OK),
    ("info write takes effect at most once",
     [w(0, 1, 0, 1), w(1, 2, 2, 3, "info"), r(2, 2, 4, 5), w(0, 3, 6, 7), r(2, 2, 8, 9)], BAD),
    ("info write not before its call", [w(0, 1, 0, 1), r(2, 2, 2, 3), w(1, 2, 4, 5, "info")], BAD),
    ("failed write must not be seen", [w(0, 1, 0, 1), w(1, 2, 2, 3, "fail"), r(2, 2, 4, 5)], BAD),
    ("failed write must not be seen even while in flight", [w(1, 2, 0, 3, "fail"), r(2, 2, 1, 2)], BAD),
    ("failed and info reads say nothing", [w(0, 1, 0, 1), r(1, 9, 2, 3, "fail"), r(1, 8, 2, 3, "info")], OK),
    ("cas from the current value", [w(0, 1, 0, 1), cas(1, 1, 2, 2, 3), r(2, 2, 4, 5)], OK),
    ("ok cas from a value the register does not hold", [w(0, 1, 0, 1), cas(1, 3, 4, 2, 3)], BAD),
    ("failed cas changes nothing", [w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, "fail"), r(2, 1, 4, 5)], OK),
    ("failed cas must not be seen", [w(0, 1, 0, 1), cas(1, 1, 2, 2, 3, "fail"), r(2, 2, 4, 5)], BAD),
    ("concurrent cas chain in the only legal order",
     [w(0, 0, 0, 1), cas(1, 1, 2, 2, 10), cas(2, 0, 1, 3, 9), r(3, 2, 11, 12)], OK),
    ("two concurrent cas from the same value both succeed",
     [w(0, 0, 0, 1), cas(1, 0, 1, 2, 5), cas(2, 0, 2, 3, 6)], BAD),
    ("info cas may have happened", [w(0, 0, 0, 1), cas(1, 0, 1, 2, 3, "info"), r(2, 1, 4, 5)], OK),
    ("info cas may not have happened", [w(0, 0, 0, 1), cas(1, 0, 1, 2, 3, "info"), r(2, 0, 4, 5)], OK),
    ("info cas only when its expected value is there",
     [w(0, 0, 0, 1), cas(1, 5, 1, 2, 3, "info"), r(2, 1, 4, 5)], BAD),
]


@pytest.mark.parametrize("history, verdict", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hand_made_histories(history: list[Operation], verdict: Verdict) -> None:
    """Each small history gets the verdict its name argues for (see CASES)."""
    result = check(history)
    assert result.verdict is verdict, result.report()
    for key_result in result.keys.values():
        if key_result.ok:
            _assert_witness(key_result, [op for op in history if op.key == key_result.key])


def test_only_the_bad_key_fails() -> None:
    """Keys are independent registers: one key's violation is reported on that key alone, and
    a value written to one key is never seen on another."""
    history = [
        w(0, 1, 0, 1, key="x"), w(0, 1, 0, 1, key="y"), w(0, 1, 0, 1, key="z"),
        w(1, 2, 2, 3, key="x"), w(1, 3, 2, None, "info", key="z"),
        r(2, 2, 4, 5, key="x"), r(2, 2, 4, 5, key="y"), r(2, 3, 4, 5, key="z"),
    ]
    result = check(history)
    assert list(result.keys) == ["x", "y", "z"]
    assert [result.keys[k].verdict for k in "xyz"] == [OK, BAD, OK]
    assert result.verdict is BAD and not result.ok
    assert [f.key for f in result.failures] == ["y"]
    assert "key 'y' is not linearizable" in result.report() and "key 'x'" not in result.report()


def test_violation_explanation_names_the_prefix_and_the_stuck_operations() -> None:
    """For a failing key the result carries the longest linearizable prefix, the register
    value after it, and the operations that could not go next, and says so in words."""
    stale = r(2, 1, 4, 5)
    result = check([w(0, 1, 0, 1), w(1, 2, 2, 3), stale, cas(3, 5, 6, 4.5, 6)]).keys["x"]
    assert result.verdict is BAD
    assert [op.value for op in result.linearization] == [1, 2]
    assert result.state == 2
    assert result.unplaced == (stale, cas(3, 5, 6, 4.5, 6))
    text = result.explanation
    assert "not linearizable" in text and "longest linearizable prefix found has 2 operations" in text
    assert "p1 write 2 [2, 3] ok" in text
    assert "p2 read 1 [4, 5] ok: it read 1 but the register holds 2" in text
    assert "p3 cas 5->6 [4.5, 6] ok: it expected 5 but the register holds 2, and no write or cas sets 5" in text


def test_step_bound_answers_unknown_instead_of_hanging() -> None:
    """On an adversarial history (30 concurrent writes, then two reads no order of them can
    satisfy: the search must try ~2^30 placed sets), the step bound stops the search quickly
    with "unknown" for that key, while other keys are still judged."""
    adversarial = [w(p, p, 0, 100) for p in range(30)] + [r(99, 1, 200, 201), r(99, 2, 202, 203)]
    history = adversarial + [w(0, 1, 0, 1, key="y"), r(1, 1, 2, 3, key="y")]
    started = time.perf_counter()
    result = check(history, steps_max=50_000)
    assert time.perf_counter() - started < 5
    x = result.keys["x"]
    assert x.verdict is Verdict.UNKNOWN and x.steps == 50_000
    assert x.unplaced == () and len(x.linearization) >= 30
    assert "unknown" in x.explanation and "50000 steps" in x.explanation
    assert result.keys["y"].ok
    assert result.verdict is Verdict.UNKNOWN and "unknown" in result.report()
    with pytest.raises(ValueError):
        check(history, steps_max=0)


# ---- the history model ------------------------------------------------------------------


def test_history_from_events_pairs_invokes_with_completions() -> None:
    """Invokes pair with the same process's next completion, in invoke order; a read's value
    comes from its completion; an invoke never completed becomes info with no return time."""
    events = [
        Event(1, "invoke", "x", "write", 3, 0.0),
        Event(2, "invoke", "x", "read", None, 0.1),
        Event(3, "invoke", "x", "cas", (3, 4), 0.2),
        Event(2, "ok", "x", "read", 3, 0.3),
        Event(1, "ok", "x", "write", 3, 0.4),
        Event(2, "invoke", "x", "read", None, 0.5),
        Event(2, "info", "x", "read", None, 0.9),
    ]
    assert history_from_events(events) == [
        w(1, 3, 0.0, 0.4),
        r(2, 3, 0.1, 0.3),
        cas(3, 3, 4, 0.2, None, "info"),
        r(2, None, 0.5, 0.9, "info"),
    ]
    with pytest.raises(ValueError, match="outstanding"):
        history_from_events([Event(1, "invoke", "x", "read", None, 0), Event(1, "invoke", "x", "read", None, 1)])
    with pytest.raises(ValueError, match="without an invoke"):
        history_from_events([Event(1, "ok", "x", "read", 1, 0)])


def test_json_lines_round_trip(tmp_path: pathlib.Path) -> None:
    """A history saved as JSON lines loads back equal, cas pairs and missing returns included."""
    history = [w(1, "a", 0.5, 0.7), cas(2, "a", (1, 2), 0.6, None, "info", key=7), r(3, None, 1, 2, "fail")]
    text = dumps_history(history)
    assert len(text.splitlines()) == 3 and loads_history(text + "\n") == history
    save_history(tmp_path / "h.jsonl", history)
    assert load_history(tmp_path / "h.jsonl") == history
    with pytest.raises(ValueError, match="line 1"):
        loads_history('{"process": 1}')


@pytest.mark.parametrize(
    "fields, error",
    [
        (dict(kind="delete"), ValueError),
        (dict(outcome="maybe"), ValueError),
        (dict(return_time=None), ValueError),  # only info may lack a return
        (dict(return_time=-1.0), ValueError),
        (dict(kind="cas", value=5), ValueError),
        (dict(value=[1, 2]), TypeError),  # values are model states: hashable
    ],
)
def test_operation_rejects_malformed_records(fields: dict, error: type) -> None:
    """An operation that cannot be judged is refused when built, not misjudged later."""
    with pytest.raises(error):
        dataclasses.replace(w(0, 1, 0.0, 1.0), **fields)


def test_info_return_time_is_infinite() -> None:
    """An info operation may take effect at any time after its call, whatever it recorded."""
    assert w(0, 1, 0, 1, "info").effective_return_time == math.inf
    assert w(0, 1, 0, 1, "ok").effective_return_time == 1


# ---- properties -------------------------------------------------------------------------

KEYS = ("x", "y")
VALUES = st.integers(0, 3)
OFFSET = st.integers(0, 40).map(lambda tenths: tenths / 10)


@st.composite
def recorded_runs(draw: st.DrawFn, ops_max: int = 24) -> list[Operation]:
    """Operations applied to real registers one at a time, the i-th at moment i, each recorded
    with a call time before and a return time after its moment (an info operation may record a
    return before its moment, or none: the client gave up). Outcomes are what a real register
    says: a cas whose expected value is not there fails; an info operation took effect or not."""
    registers: dict[str, object] = {k: None for k in KEYS}
    history = []
    for moment in range(draw(st.integers(0, ops_max))):
        key = draw(st.sampled_from(KEYS))
        kind = draw(st.sampled_from(["write", "read", "cas"]))
        outcome = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail"]))
        current = registers[key]
        applied = outcome == "ok" or (outcome == "info" and draw(st.booleans()))
        if kind == "write":
            value = draw(VALUES)
            if applied:
                registers[key] = value
        elif kind == "read":
            value = current if outcome == "ok" else None
        else:
            expected = draw(st.one_of(st.just(current), st.none(), VALUES))
            value = (expected, draw(VALUES))
            if applied and current == expected:
                registers[key] = value[1]
            elif outcome == "ok":
                outcome = "fail"
        call = moment - draw(OFFSET)
        ret: float | None = moment + draw(OFFSET)
        if outcome == "info":
            ret = draw(st.one_of(st.none(), OFFSET.map(lambda d: call + 2 * d)))
        history.append(Operation(draw(st.integers(0, 4)), key, kind, value, call, ret, outcome))
    # A recorded history lists operations in call order, not in order of effect.
    return sorted(history, key=lambda op: op.call_time)


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(recorded_runs())
def test_histories_of_a_real_register_are_linearizable(history: list[Operation]) -> None:
    """Any history recorded against a real sequential register, with each real-time interval
    containing the moment the operation took effect, is judged linearizable, and the witness
    it returns is a legal order that respects real time."""
    result = check(history)
    assert result.ok, result.report()
    for key_result in result.keys.values():
        _assert_witness(key_result, [op for op in history if op.key == key_result.key])


@PROPERTY_SETTINGS
@given(recorded_runs(), st.data())
def test_a_read_of_an_overwritten_value_is_caught(history: list[Operation], data: st.DataObject) -> None:
    """Changing one read to return a value that was certainly overwritten before the read was
    called makes the history not linearizable, and the report's stuck operations are reads or
    cas that are illegal after the prefix found."""
    candidates = _stale_read_mutations(history)
    assume(candidates)
    index, stale = data.draw(st.sampled_from(candidates))
    assert history[index].value != stale
    mutated = list(history)
    mutated[index] = dataclasses.replace(history[index], value=stale)
    result = check(mutated)
    key_result = result.keys[history[index].key]
    assert key_result.verdict is BAD, key_result.explanation
    assert key_result.unplaced
    for op in key_result.unplaced:
        assert op.kind != "write" and op.outcome == "ok"
        assert not register_step(key_result.state, op)[0]


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to five arbitrary operations on one key: any values, overlapping or touching times."""
    ops = []
    for p in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["write", "read", "cas"]))
        value = (draw(st.none() | VALUES), draw(VALUES)) if kind == "cas" else draw(st.none() | VALUES)
        call = draw(st.integers(0, 6))
        ret = call + draw(st.integers(0, 4))
        ops.append(Operation(p, "x", kind, value, call, ret, draw(st.sampled_from(["ok", "ok", "info", "fail"]))))
    return ops


@settings(max_examples=300, deadline=None)
@given(tiny_histories())
def test_agrees_with_brute_force_on_tiny_histories(history: list[Operation]) -> None:
    """On arbitrary tiny histories the search agrees with trying every order of every subset
    of the info operations."""
    assert check(history).ok == _brute_force_linearizable(history)


# ---- helpers ----------------------------------------------------------------------------


def _assert_witness(key_result: KeyResult, history: list[Operation]) -> None:
    """The witness holds every ok operation, no failed one and no read with an unknown
    outcome; replayed in order it is legal; no operation in it precedes one that returned
    before it was called."""
    order = key_result.linearization
    assert len(set(map(id, order))) == len(order)
    assert {id(op) for op in history if op.outcome == "ok"} <= {id(op) for op in order}
    assert all(op.outcome != "fail" and not (op.outcome == "info" and op.kind == "read") for op in order)
    state = None
    for op in order:
        legal, state = register_step(state, op)
        assert legal, op.describe()
    assert state == key_result.state
    for a, b in itertools.combinations(order, 2):
        assert not b.effective_return_time < a.call_time, (a.describe(), b.describe())


def _sets(op: Operation) -> object:
    return op.value if op.kind == "write" else op.value[1]


def _stale_read_mutations(history: list[Operation]) -> list[tuple[int, object]]:
    """(index of an ok read, value) such that every operation that might set the value (or the
    initial state, for None) returned before some ok operation that certainly set another value
    was called, and that operation returned before the read was called."""
    found = []
    for index, read in enumerate(history):
        if read.kind != "read" or read.outcome != "ok":
            continue
        same_key = [op for op in history if op.key == read.key and op.kind != "read" and op.outcome != "fail"]
        for value in sorted({None, *map(_sets, same_key)}, key=repr):
            if value == read.value:
                continue
            producers_done = max(
                (op.effective_return_time for op in same_key if _sets(op) == value), default=-math.inf
            )
            overwritten = any(
                op.outcome == "ok" and _sets(op) != value
                and producers_done < op.call_time and op.effective_return_time < read.call_time
                for op in same_key
            )
            if overwritten:
                found.append((index, value))
    return found


def _brute_force_linearizable(history: list[Operation]) -> bool:
    ok_ops = [op for op in history if op.outcome == "ok"]
    maybe = [op for op in history if op.outcome == "info" and op.kind != "read"]
    for chosen in itertools.product([False, True], repeat=len(maybe)):
        ops = ok_ops + [op for op, take in zip(maybe, chosen) if take]
        for order in itertools.permutations(ops):
            if any(b.effective_return_time < a.call_time for a, b in itertools.combinations(order, 2)):
                continue
            state, legal = None, True
            for op in order:
                legal, state = register_step(state, op)
                if not legal:
                    break
            if legal:
                return True
    return False


def test_check_key_refuses_other_keys() -> None:
    """check_key is for one register: operations on another key are a caller's mistake."""
    with pytest.raises(ValueError):
        check_key("x", [w(0, 1, 0, 1, key="y")])
