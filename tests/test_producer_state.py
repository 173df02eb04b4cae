"""The idempotent-producer table (segments/producer_state.py) against a reference model.

The model keeps every batch ever appended, per producer, and answers each send from that
history: a resend of one of the producer's last five batches is a duplicate with the
original's offsets, an older resend or an overlap is a duplicate we cannot place, a gap is
refused. The table must agree on every send, never append a batch twice, and a table
rebuilt from the written headers (or from a snapshot) must answer exactly like the live one.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.segments.batch import CONTROL_FLAG, MAGIC, NO_PRODUCER_ID, BatchHeader
from kolk.segments.producer_state import (
    APPEND,
    BATCHES_KEPT,
    DUPLICATE,
    NOT_IDEMPOTENT,
    SEQUENCE_MODULUS as M,
    DuplicateSequenceError,
    InvalidSequenceError,
    KeptBatch,
    OutOfOrderSequenceError,
    ProducerFencedError,
    ProducerStateError,
    ProducerStateTable,
    Verdict,
)

PIDS = [7, 8, 9]


def header(pid: int, epoch: int, seq: int, count: int, base_offset: int,
           control: bool = False) -> BatchHeader:
    return BatchHeader(
        base_offset=base_offset, batch_length=49, leader_epoch=0, magic=MAGIC, crc=0,
        attributes=CONTROL_FLAG if control else 0, last_offset_delta=count - 1,
        first_timestamp=0, max_timestamp=0, producer_id=pid, producer_epoch=epoch,
        base_sequence=seq, record_count=count,
    )


def outcome(table: ProducerStateTable, query: tuple[int, int, int, int]) -> object:
    """The verdict, or the class of the error raised: comparable between tables."""
    try:
        return table.check(*query)
    except ProducerStateError as exc:
        assert f"producer {query[0]}" in str(exc)
        return type(exc)


class Model:
    """Everything appended, per producer, in append order; no eviction (producers_max is big)."""

    def __init__(self) -> None:
        # pid -> [(epoch, first_seq, last_seq, base_offset, last_offset)]
        self.history: dict[int, list[tuple[int, int, int, int, int]]] = {}
        self.written: set[tuple[int, int, int, int]] = set()  # (pid, epoch, first, last)

    def epoch(self, pid: int) -> int:
        return self.history[pid][-1][0]

    def current(self, pid: int) -> list[tuple[int, int, int, int, int]]:
        """The batches of the producer's current epoch, oldest first."""
        return [b for b in self.history[pid] if b[0] == self.epoch(pid)]

    def next_seq(self, pid: int) -> int:
        return (self.history[pid][-1][2] + 1) % M

    def expect(self, pid: int, epoch: int, seq: int, count: int) -> object:
        if pid == NO_PRODUCER_ID:
            return Verdict(NOT_IDEMPOTENT)
        if epoch < 0 or seq < 0 or count < 1:
            return InvalidSequenceError
        if pid not in self.history:
            return Verdict(APPEND) if seq == 0 else OutOfOrderSequenceError
        if epoch != self.epoch(pid):
            if epoch < self.epoch(pid):
                return ProducerFencedError
            return Verdict(APPEND) if seq == 0 else OutOfOrderSequenceError
        last = (seq + count - 1) % M
        for _, first, b_last, base, end in self.current(pid)[-BATCHES_KEPT:]:
            if (first, b_last) == (seq, last):
                return Verdict(DUPLICATE, base, end)
        written = sum((b[2] - b[1]) % M + 1 for b in self.current(pid))
        ahead, behind = (seq - self.next_seq(pid)) % M, (self.next_seq(pid) - seq) % M
        if ahead == 0:
            return Verdict(APPEND)
        if ahead <= 1000:
            return OutOfOrderSequenceError
        assert behind <= written + 1000, "the generator only makes near gaps and near resends"
        return DuplicateSequenceError

    def append(self, pid: int, epoch: int, seq: int, count: int, base: int, end: int) -> None:
        key = (pid, epoch, seq, (seq + count - 1) % M)
        assert key not in self.written, f"batch {key} appended twice"
        self.written.add(key)
        self.history.setdefault(pid, []).append((epoch, seq, key[3], base, end))


# Sends dominate so that producers often have more than BATCHES_KEPT batches in an epoch.
KINDS = ["send"] * 8 + ["retry"] * 4 + ["gap", "overlap", "overlap", "bump", "bad_bump",
                                        "zombie", "plain", "control", "invalid"]
starts = st.one_of(st.just(0), st.integers(M - 12, M - 1), st.integers(0, M - 1))
actions = st.tuples(
    st.sampled_from(KINDS), st.sampled_from(PIDS), st.integers(1, 4),  # kind, pid, count
    st.integers(1, 12), starts, st.integers(0, 3), st.booleans(),  # k, start, epoch, via header
)


def resolve(model: Model, action: tuple) -> tuple[int, int, int, int] | None:
    """Turn an abstract action into a (pid, epoch, seq, count) send, or None if not applicable."""
    kind, pid, count, k, start, epoch0, _ = action
    if kind == "plain":
        return (NO_PRODUCER_ID, -1, -1, count)
    if kind == "invalid":
        return [(pid, -1, 0, count), (pid, 0, -1, count), (pid, 0, 0, 0)][k % 3]
    if pid not in model.history:
        return (pid, epoch0, start, count) if kind == "send" else None
    epoch, nxt = model.epoch(pid), model.next_seq(pid)
    if kind == "send":
        return (pid, epoch, nxt, count)
    if kind == "retry":  # an exact resend of one of the producer's batches, of any epoch
        b_epoch, first, last, _, _ = model.history[pid][-min(k, len(model.history[pid]))]
        return (pid, b_epoch, first, (last - first) % M + 1)
    if kind == "gap":
        return (pid, epoch, (nxt + k) % M, count)
    if kind == "overlap":  # starts before the next expected sequence
        return (pid, epoch, (nxt - k) % M, count)
    if kind == "bump":
        return (pid, epoch + 1, 0, count)
    if kind == "bad_bump":
        return (pid, epoch + 1, k, count)
    if kind == "zombie":
        return (pid, epoch - 1, nxt, count) if epoch > 0 else None
    return None


@settings(max_examples=150, deadline=None)
@given(st.lists(actions, min_size=10, max_size=80))
def test_table_matches_model_and_rebuild(steps: list[tuple]) -> None:
    table, model = ProducerStateTable(), Model()
    headers: list[BatchHeader] = []
    queries: list[tuple[int, int, int, int]] = []
    for action in steps:
        kind, pid, via_header = action[0], action[1], action[6]
        if kind == "control":  # a marker batch: in the log, but no producer state
            if pid in model.history:  # valid-looking sequence fields, still not producer state
                base = headers[-1].next_offset if headers else 0
                query = (pid, model.epoch(pid), model.next_seq(pid), 1)
                headers.append(header(*query, base, control=True))
            continue
        query = resolve(model, action)
        if query is None:
            continue
        queries.append(query)
        if query[0] not in model.history and query[0] != NO_PRODUCER_ID and query[2] > 0 and kind == "send":
            # A producer first seen mid-sequence (near the wrap, say) is refused by check, but
            # a follower takes it from the leader's log: record it that way.
            assert outcome(table, query) == OutOfOrderSequenceError
            base = headers[-1].next_offset if headers else 0
            h = header(*query, base)
            headers.append(h)
            model.append(*query, h.base_offset, h.last_offset)
            table.record_header(h)
            continue
        before = table.snapshot()
        got = outcome(table, query)
        assert table.snapshot() == before, "check changed the table"
        assert got == model.expect(*query), (query, got)
        if got in (Verdict(APPEND), Verdict(NOT_IDEMPOTENT)):
            base = headers[-1].next_offset if headers else 0
            h = header(*query, base)
            headers.append(h)
            if got.kind == APPEND:
                model.append(*query, h.base_offset, h.last_offset)
                if via_header:
                    table.record_header(h)
                else:
                    table.record(*query, h.base_offset, h.last_offset)
    # Probes: every send made, every batch ever written resent, the next and the next-but-one.
    for pid in model.history:
        e, nxt = model.epoch(pid), model.next_seq(pid)
        queries += [(pid, e, nxt, 1), (pid, e, (nxt + 1) % M, 1), (pid, e + 1, 0, 1)]
        queries += [(pid, b[0], b[1], (b[2] - b[1]) % M + 1) for b in model.history[pid]]
    rebuilt = ProducerStateTable.rebuild(headers)
    restored = ProducerStateTable.from_snapshot(json.loads(json.dumps(table.snapshot())))
    assert rebuilt.snapshot() == restored.snapshot() == table.snapshot()
    for q in queries:
        assert outcome(rebuilt, q) == outcome(restored, q) == outcome(table, q), q


@given(st.lists(st.sampled_from(range(8)), max_size=80), st.integers(1, 5))
def test_eviction_keeps_the_most_recently_appended(pids: list[int], producers_max: int) -> None:
    """The table keeps the producers_max producers whose last append is the most recent."""
    table, last_append = ProducerStateTable(producers_max), {}
    for i, pid in enumerate(pids):
        table.record(pid, 0, i, 1, i, i)  # sequences jump: record does not check
        last_append[pid] = i
        kept = sorted(last_append, key=last_append.get)[-producers_max:]
        assert len(table) == len(kept) <= producers_max
        assert all(p in table for p in kept)
        for p in set(last_append) - set(kept):  # evicted: unknown again, must start at 0
            assert table.check(p, 0, 0, 1) == Verdict(APPEND)
            with pytest.raises(OutOfOrderSequenceError, match="unknown"):
                table.check(p, 0, 12345, 1)
    snap = table.snapshot()
    assert [p["producer_id"] for p in snap["producers"]] == sorted(
        (p for p in last_append if p in table), key=last_append.get)
    smaller = ProducerStateTable.from_snapshot(snap, producers_max=1)
    assert smaller.snapshot()["producers"] == snap["producers"][-1:]


def test_eviction_example() -> None:
    t = ProducerStateTable(producers_max=3)
    for pid in (1, 2, 3, 1):
        t.record(pid, 0, 0, 1, pid, pid)
    t.record(4, 0, 0, 1, 4, 4)  # 2 is the producer whose last append is oldest
    assert [p in t for p in (1, 2, 3, 4)] == [True, False, True, True]
    assert t.get(1).last_append == 4 and t.get(4).last_append == 5


def table_with(pid: int = 7, epoch: int = 3, batches: int = 1,
               count: int = 2) -> ProducerStateTable:
    t = ProducerStateTable()
    for i in range(batches):
        t.record(pid, epoch, i * count, count, 100 + i * count, 100 + i * count + count - 1)
    return t


def test_fenced_names_both_epochs() -> None:
    with pytest.raises(ProducerFencedError, match="producer 7 epoch 2 is older than epoch 3"):
        table_with().check(7, 2, 2, 1)


def test_gap_names_expected_and_got() -> None:
    with pytest.raises(OutOfOrderSequenceError,
                       match="producer 7 epoch 3: expected sequence 2, got 5"):
        table_with().check(7, 3, 5, 1)


def test_new_epoch_must_start_at_zero() -> None:
    with pytest.raises(OutOfOrderSequenceError,
                       match=r"producer 7 epoch 4 .*latest was 3.* expected sequence 0, got 4"):
        table_with().check(7, 4, 4, 1)
    with pytest.raises(OutOfOrderSequenceError, match="got 1"):
        table_with().check(7, 4, 1, 1)
    assert table_with().check(7, 4, 0, 3) == Verdict(APPEND)


def test_duplicates_within_and_beyond_the_kept_batches() -> None:
    t = table_with(batches=BATCHES_KEPT + 1)  # sequences 0..11 in six batches of two
    assert t.get(7).batches[0] == KeptBatch(2, 3, 102, 103)
    assert t.check(7, 3, 2, 2) == Verdict(DUPLICATE, 102, 103)
    assert t.check(7, 3, 10, 2) == Verdict(DUPLICATE, 110, 111)
    with pytest.raises(DuplicateSequenceError,
                       match=r"producer 7 epoch 3: sequences 0\.\.1 .*expected sequence 12"):
        t.check(7, 3, 0, 2)
    with pytest.raises(DuplicateSequenceError, match=r"sequences 3\.\.5 "):  # an overlap
        t.check(7, 3, 3, 3)


@pytest.mark.parametrize("query, message", [
    ((7, 3, 0, 0), "producer 7: record count 0 is outside"),
    ((7, 3, -1, 1), "producer 7: base sequence -1 is outside"),
    ((7, -1, 0, 1), "producer 7: epoch -1 is outside"),
    ((7, 3, M, 1), f"producer 7: base sequence {M} is outside"),
    ((-5, 0, 0, 1), "producer -5: producer id -5 is negative"),
])
def test_invalid_fields(query: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(InvalidSequenceError, match=message):
        table_with().check(*query)
    with pytest.raises(InvalidSequenceError):
        ProducerStateTable().check(*query)


def test_sequences_wrap_at_2_pow_31() -> None:
    t = ProducerStateTable()
    t.record(7, 0, M - 2, 3, 0, 2)  # sequences M-2, M-1, 0
    assert t.get(7).batches == (KeptBatch(M - 2, 0, 0, 2),)
    assert t.check(7, 0, 1, 5) == Verdict(APPEND)
    assert t.check(7, 0, M - 2, 3) == Verdict(DUPLICATE, 0, 2)
    with pytest.raises(DuplicateSequenceError):
        t.check(7, 0, 0, 1)
    with pytest.raises(OutOfOrderSequenceError, match="expected sequence 1, got 2"):
        t.check(7, 0, 2, 1)


def test_unknown_and_non_idempotent_producers() -> None:
    t = table_with()
    assert t.check(8, 5, 0, 1) == Verdict(APPEND)  # a new producer starts at sequence 0
    with pytest.raises(OutOfOrderSequenceError, match="producer 8 .*unknown.*999"):
        t.check(8, 5, 999, 1)  # anything else may be a batch that overtook the first one
    assert t.check(NO_PRODUCER_ID, -1, -1, 1) == Verdict(NOT_IDEMPOTENT)
    before = t.snapshot()
    t.record(NO_PRODUCER_ID, -1, -1, 1, 0, 0)
    t.record_header(header(NO_PRODUCER_ID, -1, -1, 1, 0))
    t.record_header(header(7, 3, 2, 1, 0, control=True))
    t.record_header(header(7, 3, -1, 1, 0))  # malformed, written before fields were checked
    assert t.snapshot() == before
    assert all(issubclass(e, ProducerStateError) for e in (
        ProducerFencedError, OutOfOrderSequenceError, DuplicateSequenceError, InvalidSequenceError))


def test_snapshot_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="version"):
        ProducerStateTable.from_snapshot({"version": 99, "producers": []})
    snap = table_with().snapshot()
    snap["producers"][0]["batches"] = []
    with pytest.raises(ValueError):
        ProducerStateTable.from_snapshot(snap)
