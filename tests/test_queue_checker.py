"""The queue checker (jepsen/checkers/queue.py) and the queue history it reads
(jepsen/queue_history.py): one hand-made history per anomaly, then properties of histories
recorded against a simulated correct log."""

from __future__ import annotations

import itertools
import pathlib
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jepsen.checkers.queue import ANOMALIES, check_queue  # noqa: E402
from jepsen.queue_history import Event, Op, Recorder, pair, read_events, write_events  # noqa: E402


class H:
    """Builds a history through a Recorder with a fake clock, one whole operation per call."""

    def __init__(self) -> None:
        self.ticks = itertools.count()
        self.rec = Recorder(clock=lambda: float(next(self.ticks)))
        self.fresh = itertools.count(1000)  # process ids for final reads

    def send(self, p, key, value, outcome):
        """``outcome`` is the acknowledged offset, or "fail" or "info"."""
        i = self.rec.invoke(p, "send", key, value, node="n1")
        if isinstance(outcome, int):
            self.rec.complete(i, "ok", [value, outcome])
        else:
            self.rec.complete(i, outcome, error="boom")
        return self

    def poll(self, p, key, pairs):
        self.rec.complete(self.rec.invoke(p, "poll", key), "ok", [list(x) for x in pairs])
        return self

    def final(self, key, values):
        """A complete log: ``values`` at offsets 0, 1, ... unless given as (offset, value) pairs."""
        pairs = [x if isinstance(x, tuple) else (o, x) for o, x in enumerate(values)]
        self.rec.complete(self.rec.invoke(next(self.fresh), "final", key), "ok", [list(x) for x in pairs])
        return self

    def check(self):
        return check_queue(self.rec.events())


def anomalies(result):
    return {name for name, n in result["counts"].items() if n}


def clean():
    h = H()
    for v in range(4):
        h.send(1, 0, v, v)
    h.send(2, 1, 10, 0).send(2, 1, 11, 1)
    h.poll(5, 0, [(0, 0), (1, 1)]).poll(5, 0, [(2, 2)]).poll(5, 0, []).poll(5, 0, [(3, 3)])
    h.poll(5, 1, [(0, 10), (1, 11)])
    return h.final(0, [0, 1, 2, 3]).final(1, [10, 11])


def test_clean_history_is_valid():
    r = clean().check()
    assert r["valid"], r
    assert set(r["counts"]) == set(ANOMALIES) and not anomalies(r)
    assert r["examples"] == {}
    s = r["stats"]
    assert s["acknowledged"] == 6 and s["values_read"] == 6 and s["final_keys"] == 2
    assert s["ops"]["send"]["ok"] == 6 and s["ops"]["poll"]["ok"] == 5
    assert (s["lost_prefix"], s["lost_middle"], s["lost_postfix"]) == (0, 0, 0)


def test_lost_after_final_read():
    r = H().send(1, 0, 1, 0).send(1, 0, 2, 1).send(1, 0, 3, 2).final(0, [(0, 1), (2, 3)]).check()
    assert not r["valid"]
    assert anomalies(r) == {"lost", "unseen"}  # every lost value is also unseen
    assert r["counts"]["lost"] == r["counts"]["unseen"] == 1
    assert r["examples"]["lost"][0]["value"] == 2


def test_lost_without_final_read_when_a_poll_went_past_it():
    r = H().send(1, 0, 1, 0).send(1, 0, 2, 1).poll(5, 0, [(1, 2)]).check()
    assert anomalies(r) == {"lost", "unseen"}
    assert r["examples"]["lost"][0]["value"] == 1


def test_unseen_but_not_provably_lost():
    r = H().send(1, 0, 1, 0).send(1, 0, 2, 1).poll(5, 0, [(0, 1)]).check()
    assert not r["valid"]
    assert anomalies(r) == {"unseen"}
    assert r["examples"]["unseen"][0]["value"] == 2


def test_duplicate():
    r = H().send(1, 0, 1, 0).send(1, 0, 2, 1).final(0, [1, 2, 1]).check()
    assert anomalies(r) == {"duplicate"}
    assert r["examples"]["duplicate"] == [{"value": 1, "positions": [(0, 0), (0, 2)]}]


def test_inconsistent_offsets_two_reads_disagree():
    h = H().send(1, 0, 1, "info").send(2, 0, 2, "info")
    r = h.poll(5, 0, [(0, 2)]).final(0, [1]).check()
    assert anomalies(r) == {"inconsistent_offsets"}
    assert r["examples"]["inconsistent_offsets"] == [{"key": 0, "offset": 0, "read": [1, 2], "acked": []}]


def test_inconsistent_offsets_acknowledged_offset_holds_another_value():
    r = H().send(1, 0, 1, 0).send(2, 0, 2, "info").final(0, [2, 1]).check()
    assert anomalies(r) == {"inconsistent_offsets"}
    assert r["examples"]["inconsistent_offsets"] == [{"key": 0, "offset": 0, "read": [2], "acked": [1]}]


def test_nonmonotonic_send():
    r = H().send(1, 0, 1, 1).send(1, 0, 2, 0).final(0, [2, 1]).check()
    assert anomalies(r) == {"nonmonotonic_send"}
    assert r["examples"]["nonmonotonic_send"][0]["offsets"] == [1, 0]


def test_sends_to_different_keys_are_independent():
    r = H().send(1, 0, 1, 5).send(1, 1, 2, 0).final(0, [(5, 1)]).final(1, [2]).check()
    assert r["valid"], r


@pytest.mark.parametrize("polls, within", [
    ([[(1, 2), (0, 1)]], True),  # backwards inside one poll
    ([[(0, 1), (1, 2)], [(1, 2)]], False),  # repeated between polls
])
def test_nonmonotonic_poll(polls, within):
    h = H().send(1, 0, 1, 0).send(1, 0, 2, 1)
    for pairs in polls:
        h.poll(5, 0, pairs)
    r = h.final(0, [1, 2]).check()
    assert anomalies(r) == {"nonmonotonic_poll"}
    assert r["examples"]["nonmonotonic_poll"][0]["within_poll"] is within


@pytest.mark.parametrize("polls, within", [
    ([[(0, 1), (2, 3)]], True),
    ([[(0, 1)], [], [(2, 3)]], False),
])
def test_poll_skip(polls, within):
    h = H().send(1, 0, 1, 0).send(1, 0, 2, 1).send(1, 0, 3, 2)
    for pairs in polls:
        h.poll(5, 0, pairs)
    r = h.final(0, [1, 2, 3]).check()
    assert anomalies(r) == {"poll_skip"}
    ex = r["examples"]["poll_skip"][0]
    assert (ex["offsets"], ex["skipped_offsets"], ex["within_poll"]) == ([0, 2], [1], within)


def test_a_gap_no_read_ever_saw_is_not_a_skip():
    r = H().send(1, 0, 1, 0).send(1, 0, 3, 2).poll(5, 0, [(0, 1), (2, 3)]).final(0, [(0, 1), (2, 3)]).check()
    assert r["valid"], r


def test_polls_of_several_keys_by_one_process_are_tracked_per_key():
    h = H().send(1, 0, 1, 0).send(1, 0, 2, 1).send(2, 1, 3, 0).send(2, 1, 4, 1)
    h.poll(5, 0, [(0, 1)]).poll(5, 1, [(0, 3), (1, 4)]).poll(5, 0, [(1, 2)])
    assert h.final(0, [1, 2]).final(1, [3, 4]).check()["valid"]


def test_aborted_read():
    r = H().send(1, 0, 1, "fail").final(0, [1]).check()
    assert anomalies(r) == {"aborted_read"}
    assert r["examples"]["aborted_read"][0]["value"] == 1


def test_failed_send_never_seen_is_fine():
    assert H().send(1, 0, 1, "fail").final(0, []).check()["valid"]


def test_lost_split_prefix_middle_postfix():
    h = H()
    for v in range(5):
        h.send(1, 0, v, v)
    r = h.final(0, [(1, 1), (3, 3)]).check()
    assert anomalies(r) == {"lost", "unseen"} and r["counts"]["lost"] == 3
    s = r["stats"]
    assert (s["lost_prefix"], s["lost_middle"], s["lost_postfix"]) == (1, 1, 1)
    assert [[e["value"] for e in r["examples"][part]] for part in ("lost_prefix", "lost_middle", "lost_postfix")] \
        == [[0], [2], [4]]


def test_lost_split_when_nothing_of_a_writer_was_read():
    r = H().send(1, 0, 1, 0).send(1, 0, 2, 1).final(0, []).check()
    assert r["stats"]["lost_prefix"] == 2 and r["stats"]["lost_postfix"] == 0


def test_info_send_never_seen_is_not_an_anomaly():
    r = H().send(1, 0, 1, 0).send(2, 0, 2, "info").final(0, [1]).check()
    assert r["valid"], r
    assert r["stats"]["info_sends_unseen"] == 1


def test_info_send_seen_is_fine():
    r = H().send(1, 0, 1, 0).send(2, 0, 2, "info").poll(5, 0, [(0, 1), (1, 2)]).final(0, [1, 2]).check()
    assert r["valid"], r
    assert r["stats"]["info_sends_seen"] == 1


def test_value_never_sent_is_counted_in_stats():
    r = H().final(0, [99]).check()
    assert r["valid"] and r["stats"]["values_never_sent"] == 1


def test_retired_process_cannot_invoke():
    rec = Recorder()
    i = rec.invoke(1, "send", 0, 7)
    with pytest.raises(ValueError, match="outstanding"):
        rec.invoke(1, "poll", 0)
    assert not rec.retired(1)
    rec.complete(i, "info", error="timeout")
    assert rec.retired(1)
    with pytest.raises(ValueError, match="retired"):
        rec.invoke(1, "poll", 0)
    with pytest.raises(ValueError):
        rec.complete(i, "ok", [7, 0])  # already completed
    j = rec.invoke(2, "send", 0, 8)
    with pytest.raises(ValueError):
        rec.complete(j, "ok", [9, 0])  # not the value sent
    rec.complete(j, "fail")
    assert not rec.retired(2)
    evs = rec.events()
    assert [e.index for e in evs] == [0, 1, 2, 3] and len(rec) == 4
    assert all(a.time <= b.time for a, b in zip(evs, evs[1:]))


def test_pair_invoke_never_completed_is_info():
    ev = [Event(0, 0.0, 1, "invoke", "send", 0, 5, "n1"),
          Event(1, 0.1, 2, "invoke", "poll", 0),
          Event(2, 0.2, 2, "ok", "poll", 0, [[0, 5]]),
          Event(3, 0.3, 3, "invoke", "poll", 1)]
    ops = pair(ev)
    assert [(op.process, op.f, op.type, op.value) for op in ops] == [
        (1, "send", "info", 5), (2, "poll", "ok", ((0, 5),)), (3, "poll", "info", None)]
    assert ops[0].complete_index is None and ops[0].complete_time is None and ops[0].node == "n1"
    assert check_queue(ops)["valid"]


def test_pair_rejects_bad_histories():
    with pytest.raises(ValueError, match="without an invoke"):
        pair([Event(0, 0.0, 1, "ok", "poll", 0, [])])
    with pytest.raises(ValueError, match="outstanding"):
        pair([Event(0, 0.0, 1, "invoke", "poll", 0), Event(1, 0.1, 1, "invoke", "poll", 0)])
    with pytest.raises(ValueError, match="offset"):
        pair([Event(0, 0.0, 1, "invoke", "send", 0, 3), Event(1, 0.1, 1, "ok", "send", 0, 3)])
    with pytest.raises(ValueError):
        Event(0, 0.0, 1, "done", "poll", 0)


def test_write_read_round_trip(tmp_path):
    events = clean().rec.events() + [Event(99, 9.5, 7, "invoke", "send", 2, 42, None, None)]
    path = tmp_path / "history.jsonl"
    write_events(path, events)
    back = read_events(path)
    assert back == events
    assert check_queue(back) == check_queue(events)


# -- Properties: a simulated correct log -------------------------------------------------------

KEYS = 3


@st.composite
def correct_history(draw):
    """Writers, consumers and final readers against a correct log, with concurrent operations
    (each takes effect when it completes) and some sends failing or timing out."""
    h = H()
    logs = [[] for _ in range(KEYS)]
    position: dict[tuple[int, int], int] = {}
    values = itertools.count()
    writers, consumers = [1, 2, 3], [11, 12]
    fresh = itertools.count(100)
    pending: dict[int, tuple[int, str, int]] = {}  # process -> (id, f, key)
    for _ in range(draw(st.integers(0, 60))):
        idle = [p for p in writers + consumers if p not in pending]
        if pending and (not idle or draw(st.booleans())):
            p = draw(st.sampled_from(sorted(pending)))
            i, f, k = pending.pop(p)
            if f == "send":
                value = h.rec._pending[i].value
                outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info"]))
                if outcome == "ok" or (outcome == "info" and draw(st.booleans())):
                    logs[k].append(value)
                if outcome == "ok":
                    h.rec.complete(i, "ok", [value, len(logs[k]) - 1])
                else:
                    h.rec.complete(i, outcome)
                if outcome == "info":
                    writers[writers.index(p)] = next(fresh)
            else:
                start = position.get((p, k), draw(st.integers(0, len(logs[k]))))
                n = draw(st.integers(0, 4))
                got = [[o, logs[k][o]] for o in range(start, min(start + n, len(logs[k])))]
                position[(p, k)] = start + len(got)
                h.rec.complete(i, "ok", got)
            continue
        p = draw(st.sampled_from(idle))
        k = draw(st.integers(0, KEYS - 1))
        if p in writers:
            pending[p] = (h.rec.invoke(p, "send", k, next(values)), "send", k)
        else:
            pending[p] = (h.rec.invoke(p, "poll", k), "poll", k)
    for k in range(KEYS):
        h.final(k, logs[k])
    return h.rec.events()


@settings(max_examples=150, deadline=None)
@given(correct_history())
def test_correct_log_histories_are_valid(events):
    r = check_queue(events)
    assert r["valid"], (r["counts"], r["examples"])
    acked = sum(1 for op in pair(events) if op.f == "send" and op.type == "ok")
    assert r["stats"]["acknowledged"] == acked and r["stats"]["values_never_sent"] == 0


@settings(max_examples=150, deadline=None)
@given(correct_history(), st.data())
def test_dropping_an_acknowledged_value_from_every_read_is_lost(events, data):
    acked = [op.value for op in pair(events) if op.f == "send" and op.type == "ok"]
    if not acked:
        return
    victim = data.draw(st.sampled_from(acked))
    dropped = [Event(e.index, e.time, e.process, e.type, e.f, e.key,
                     tuple(p for p in e.value if p[1] != victim), e.node, e.error)
               if e.type == "ok" and e.f != "send" else e for e in events]
    r = check_queue(dropped)
    assert r["counts"]["lost"] >= 1 and not r["valid"]
    assert victim in [ex["value"] for ex in r["examples"]["lost"]] or r["counts"]["lost"] > 10


def test_ops_and_events_agree():
    events = clean().rec.events()
    assert check_queue(pair(events)) == check_queue(events)
    assert all(isinstance(op, Op) for op in pair(events))


def test_a_record_read_and_then_gone_from_the_final_log_is_lost() -> None:
    """What a wiped leader leaves in the history (issue 15): the consumer read offsets 0 and 1,
    the leader came back empty and its followers truncated, and the final read after healing
    holds only what was written since. The checker must call both vanished records lost, not
    only records nobody ever read; the disk-wipe runs below depend on it."""
    rec = Recorder(clock=iter(range(100)).__next__)
    for process, value, offset in ((1, 10, 0), (1, 11, 1)):
        rec.complete(rec.invoke(process, "send", 0, value), "ok", [value, offset])
    rec.complete(rec.invoke(5, "poll", 0), "ok", [[0, 10], [1, 11]])
    rec.complete(rec.invoke(1, "send", 0, 12), "ok", [12, 0])  # the new, empty log
    rec.complete(rec.invoke(9, "final", 0), "ok", [[0, 12]])
    r = check_queue(rec.events())
    assert r["counts"]["lost"] == 2 and r["counts"]["unseen"] == 0 and not r["valid"]
    assert [(e["value"], e["read_at"]) for e in r["examples"]["lost"]] == [(10, (0, 0)), (11, (0, 1))]
    assert r["counts"]["inconsistent_offsets"] == 1  # offset 0 held 10, then 12
    assert r["stats"]["lost_prefix"] == 2  # writer 1's first value that stayed is 12
