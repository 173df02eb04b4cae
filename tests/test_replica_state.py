"""The replica protocol state machine (core/spu/replica_state.py).

A model of one partition (three SPUs holding replicas, a model SC that commits in-sync
changes and elects leaders, logs whose entries are unique ids tagged with the epoch that
wrote them) drives one :class:`ReplicaState` per SPU with random histories: appends, fsyncs,
follower fetches (with the KIP-279 truncation first), ticks, in-sync requests answered or
lost, metadata delivered late or coalesced, elections, disk faults and rebuilds. After every
step it checks what acknowledging depends on:

* every member of the SC's committed in-sync set holds every acknowledged record (the high
  watermark a leader ever reached), durably, in order: an election from the set loses nothing;
* the current leader's high watermark never passes the durable end of a member of its
  effective in-sync set (committed plus additions asked for);
* no replica's high watermark goes back within an epoch;
* nothing below an acknowledged offset is ever truncated on an in-sync member;
* an in-sync change request is always based on the requester's current set and epoch, one
  at a time.

Then a few examples per event.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kolk.spu.isr import FollowerProgress
from kolk.spu.replica_state import (AdvanceHighWatermark, Diverged, DiskFault, Durable, Fence, FollowerCall,
                                    FollowerFetched, IsrChangeAnswered, LeaderHighWatermark, LeaderStartsPast, LogCut,
                                    MetadataChanged, Refuse, RefuseTruncation, ReplicaState, RequestIsrChange, ResetLog,
                                    StartFollowing, StartLeading, StopFollowing, Tick, Truncate)

SPUS = (1, 2, 3)
LAG_MS = 1_000
UNDEFINED = -1
RARE = st.integers(0, 5)  # a disruptive rule acts on 0 only, so that histories also make progress

Entry = tuple[int, int]  # (epoch that wrote it, unique id)


def end_for_epoch(log: list[Entry], epoch: int) -> tuple[int, int]:
    """LeaderEpochHistory.end_offset_for over a model log: the largest epoch <= ``epoch`` in
    it and where that epoch ended (the start of the next one, or the log end)."""
    found = UNDEFINED
    for e, _ in log:
        if e <= epoch:
            found = max(found, e)
    if found == UNDEFINED:
        return UNDEFINED, UNDEFINED
    for i, (e, _) in enumerate(log):
        if e > found:
            return found, i
    return found, len(log)


class ModelSpu:
    def __init__(self, spu_id: int) -> None:
        self.id = spu_id
        self.log: list[Entry] = []
        self.durable = 0
        self.failed = False
        self.sm = ReplicaState(spu_id, LAG_MS, name="t-0")
        self.seen = 0  # metadata snapshots delivered
        self.request: RequestIsrChange | None = None  # sent to the SC, not answered
        self.truncated = False  # the truncate-first step done for the (leader, epoch) followed
        self.last_hw: tuple[int, int] | None = None  # (epoch, high watermark) after the last step


class PartitionModel(RuleBasedStateMachine):
    """One partition, replicas 1, 2, 3, and its SC."""

    @initialize()
    def start(self) -> None:
        self.now = 0
        self.uid = 0
        self.spus = {i: ModelSpu(i) for i in SPUS}
        self.leader: int | None = 1
        self.epoch = 1
        self.isr: tuple[int, ...] = SPUS
        self.history: list[tuple[int | None, int, tuple[int, ...]]] = []
        self.acked: list[Entry] = []  # the longest prefix any leader acknowledged
        self._commit()
        for s in self.spus.values():
            self._deliver(s)

    # ------------------------------------------------------------------ plumbing

    def _commit(self) -> None:
        self.history.append((self.leader, self.epoch, self.isr))

    def _step(self, s: ModelSpu, event: Any) -> list[Any]:
        effects = s.sm.step(event)
        for eff in effects:
            self._apply(s, eff)
        return effects

    def _apply(self, s: ModelSpu, eff: Any) -> None:
        sm = s.sm
        if isinstance(eff, AdvanceHighWatermark):
            assert eff.offset <= len(s.log), (eff, len(s.log))
            prefix = s.log[:eff.offset]
            common = min(len(prefix), len(self.acked))
            assert prefix[:common] == self.acked[:common], "a high watermark over records other than acknowledged"
            if sm.is_leader and len(prefix) > len(self.acked):
                self.acked = prefix  # acks=all answered up to here
        elif isinstance(eff, RequestIsrChange):
            assert s.request is None, "two in-sync requests in flight"
            assert eff.based_on == sm.isr and eff.epoch == sm.epoch, (eff, sm.isr, sm.epoch)
            assert s.id in eff.isr
            s.request = eff
        elif isinstance(eff, StartFollowing):
            s.truncated = False
        elif isinstance(eff, Truncate):
            assert eff.offset >= sm.high_watermark
            if s.id in self.isr:
                assert eff.offset >= len(self.acked), f"SPU {s.id} in the set cuts acknowledged records"
            del s.log[eff.offset:]
            s.durable = min(s.durable, eff.offset)
            self._step(s, LogCut(min(sm.high_watermark, eff.offset), s.durable))
        elif isinstance(eff, ResetLog):
            s.log, s.durable = [], 0  # the model logs start at 0; never reached
            self._step(s, LogCut(0, 0))
        elif isinstance(eff, RefuseTruncation):
            raise AssertionError(f"a leader lost acknowledged records in a clean model: {eff.message}")
        elif isinstance(eff, (Fence, StartLeading, StopFollowing, Refuse)):
            pass
        else:
            raise AssertionError(f"unknown effect {eff!r}")

    def _deliver(self, s: ModelSpu, latest: bool = False) -> None:
        if s.seen >= len(self.history):
            return
        s.seen = len(self.history) if latest else s.seen + 1
        leader, epoch, isr = self.history[s.seen - 1]
        self._step(s, MetadataChanged(leader, epoch, SPUS, isr, len(s.log), s.durable, self.now))

    def _serve_call(self, f: ModelSpu, epoch: int, leader: ModelSpu) -> bool:
        """The leader's checks of a follower's call (SpuServer.led_replica, then the state)."""
        lsm = leader.sm
        if lsm.leader is None or not lsm.is_leader or lsm.fenced:
            return False
        effects = self._step(leader, FollowerCall(f.id, epoch))
        return not any(isinstance(e, Refuse) for e in effects)

    # ------------------------------------------------------------------ rules

    @rule(spu=st.sampled_from(SPUS), count=st.integers(1, 3))
    def append(self, spu: int, count: int) -> None:
        s = self.spus[spu]
        if s.sm.leading and not s.failed:
            for _ in range(count):
                self.uid += 1
                s.log.append((s.sm.epoch, self.uid))

    @rule(spu=st.sampled_from(SPUS))
    def fsync(self, spu: int) -> None:
        s = self.spus[spu]
        if not s.failed:
            s.durable = len(s.log)
            self._step(s, Durable(s.durable))

    @rule(spu=st.sampled_from(SPUS), count=st.integers(1, 4))
    def follower_fetch(self, spu: int, count: int) -> None:
        f = self.spus[spu]
        if f.failed or f.sm.followed is None:
            return
        leader_id, epoch = f.sm.followed
        leader = self.spus[leader_id]
        if not f.truncated:
            query = f.log[-1][0] if f.log else UNDEFINED
            while f.log:
                if not self._serve_call(f, epoch, leader):
                    return
                answer_epoch, answer_end = end_for_epoch(leader.log, query)
                if answer_epoch == UNDEFINED:
                    self._step(f, Diverged(0, 0, len(f.log), f.log[-1][0], leader_id, epoch))
                    break
                local_epoch, local_end = end_for_epoch(f.log, answer_epoch)
                local_end = 0 if local_epoch == UNDEFINED else local_end
                self._step(f, Diverged(min(answer_end, local_end), 0, len(f.log), f.log[-1][0], leader_id, epoch))
                if local_epoch in (answer_epoch, UNDEFINED):
                    break
                query = local_epoch
            f.truncated = True
        offset = len(f.log)
        f.durable = offset  # a follower fsyncs before it fetches: the offset is its durable end
        if not self._serve_call(f, epoch, leader):
            return
        if offset > len(leader.log):
            f.truncated = False  # offsetOutOfRange: find the divergence again
            return
        self._step(leader, FollowerFetched(f.id, offset, len(leader.log), leader.durable, self.now))
        data = leader.log[offset:offset + count]
        hw = leader.sm.high_watermark
        f.log.extend(data)
        f.durable = len(f.log)
        self._step(f, LeaderHighWatermark(hw, len(f.log)))

    @rule(count=st.integers(1, 3), followers=st.lists(st.sampled_from(SPUS), min_size=1, max_size=6))
    def replicate(self, count: int, followers: list[int]) -> None:
        """Many steps at once, as they mostly come: the leaders append and fsync, followers fetch."""
        for s in self.spus.values():
            self.append(s.id, count)
            self.fsync(s.id)
        for f in followers:
            self.follower_fetch(f, count)

    @rule(ms=st.sampled_from([0, 10, 300, LAG_MS // 2, LAG_MS + 1]))
    def tick(self, ms: int) -> None:
        self.now += ms
        for s in self.spus.values():
            self._step(s, Tick(self.now))

    @rule()
    def settle(self) -> None:
        """The SC answers every request in flight and every SPU sees the latest metadata."""
        for s in self.spus.values():
            self.sc_answers(s.id, "answered")
        for s in self.spus.values():
            self._deliver(s, latest=True)

    @rule(spu=st.sampled_from(SPUS), fate=st.sampled_from(["answered", "answer lost", "request lost"]))
    def sc_answers(self, spu: int, fate: str) -> None:
        """The SC's update_isr (metadata/partition_ops.py) on the request in flight."""
        s = self.spus[spu]
        req = s.request
        if req is None:
            return
        s.request = None
        if fate == "request lost":
            outcome = "unknown"
        elif req.epoch != self.epoch or self.leader != spu:
            outcome = "stale"
        elif sorted(req.based_on) != sorted(self.isr):
            outcome = "conflict"
        else:
            if sorted(req.isr) != sorted(self.isr):
                self.isr = tuple(r for r in SPUS if r in req.isr)
                self._commit()
            outcome = "committed" if fate == "answered" else "unknown"
        self._step(s, IsrChangeAnswered(req, outcome))  # type: ignore[arg-type]

    @rule(spu=st.sampled_from(SPUS), latest=st.booleans())
    def deliver_metadata(self, spu: int, latest: bool) -> None:
        self._deliver(self.spus[spu], latest)

    @rule(pick=st.integers(0, 2), drop_old=st.booleans(), chance=RARE)
    def elect(self, pick: int, drop_old: bool, chance: int) -> None:
        """The old leader is taken for dead (it may live on, deposed); an in-sync replica
        leads at the next epoch, the old one dropped from the set with it (KIP-841)."""
        if chance:
            return
        candidates = [r for r in self.isr if r != self.leader and not self.spus[r].failed]
        if not candidates:
            return
        new = candidates[pick % len(candidates)]
        old = self.leader
        self.epoch += 1
        self.leader = new
        if drop_old and old is not None and old in self.isr:
            self.isr = tuple(r for r in self.isr if r != old)
        self._commit()

    @rule(spu=st.sampled_from(SPUS), chance=RARE)
    def disk_fault(self, spu: int, chance: int) -> None:
        """The log fails; the SPU reports it and the SC takes the replica out (lose_replica,
        keep_last: never the last member of the set)."""
        s = self.spus[spu]
        if s.failed or chance:
            return
        s.failed = True
        effects = self._step(s, DiskFault("EIO"))
        assert any(isinstance(e, Fence) and e.kind == "disk" for e in effects)
        assert not s.sm.leading and s.sm.followed is None
        if self.isr == (spu,):
            # The last member stays, at a new epoch: it may come back without the tail it had
            # not fsynced, and followers that copied that tail must truncate it (KIP-279).
            self.epoch += 1
            self._commit()
            return
        self.isr = tuple(r for r in self.isr if r != spu)
        self.epoch += 1
        if self.leader == spu:
            self.leader = None
        self._commit()

    @precondition(lambda self: self.leader is None)
    @rule()
    def elect_after_a_fault(self) -> None:
        live = [r for r in self.isr if not self.spus[r].failed]
        if live:
            self.epoch += 1
            self.leader = live[0]
            self._commit()

    @rule(spu=st.sampled_from(SPUS))
    def rebuild(self, spu: int, lose_unsynced: bool = False) -> None:
        """DiskFaults._recovery: empty when a live leader elsewhere has the data and the SC
        has this replica out of the set (as this SPU's metadata says); else its own log
        reopened. Recovery keeps what the file still holds past the last fsync (the page
        cache had it); ``lose_unsynced`` loses it (test_a_rebuilt_leader_that_lost_its_unsynced_tail)."""
        s = self.spus[spu]
        if not s.failed:
            return
        leader, _, isr = self.history[s.seen - 1]  # as this SPU knows it
        if leader is not None and leader != spu and not self.spus[leader].failed:
            if spu in isr:
                return
            s.log, s.durable, hw = [], 0, 0
        else:
            if lose_unsynced:
                del s.log[s.durable:]
            s.durable = len(s.log)  # recovery checked it
            hw = s.sm.high_watermark
        s.failed, s.request, s.last_hw = False, None, None
        s.sm = ReplicaState(spu, LAG_MS, name="t-0", high_watermark=hw, durable=s.durable)
        leader, epoch, isr = self.history[s.seen - 1]
        self._step(s, MetadataChanged(leader, epoch, SPUS, isr, len(s.log), s.durable, self.now))

    # ------------------------------------------------------------------ invariants

    @invariant()
    def acknowledged_records_are_on_every_in_sync_member(self) -> None:
        n = len(self.acked)
        for r in self.isr:
            s = self.spus[r]
            assert s.durable >= n, f"SPU {r} in the set {self.isr} has {s.durable} durable, {n} acknowledged"
            assert s.log[:n] == self.acked, f"SPU {r} in the set holds other records below {n}"

    @invariant()
    def the_leaders_mark_is_within_its_effective_set(self) -> None:
        if self.leader is None:
            return
        s = self.spus[self.leader]
        sm = s.sm
        if not sm.leading or sm.epoch != self.epoch:
            return
        for r in sm.effective_isr():
            assert sm.high_watermark <= self.spus[r].durable, (
                f"high watermark {sm.high_watermark} past SPU {r}'s durable end {self.spus[r].durable}")

    @invariant()
    def the_mark_never_goes_back_within_an_epoch(self) -> None:
        for s in self.spus.values():
            now = (s.sm.epoch, s.sm.high_watermark)
            if s.last_hw is not None and s.last_hw[0] == now[0]:
                assert now[1] >= s.last_hw[1], f"SPU {s.id}'s high watermark went back within epoch {now[0]}"
            s.last_hw = now

    @invariant()
    def the_state_matches_the_log(self) -> None:
        for s in self.spus.values():
            assert s.sm.high_watermark <= len(s.log)
            if s.sm.leading:
                assert s.sm.high_watermark <= s.durable


TestPartitionModel = PartitionModel.TestCase
TestPartitionModel.settings = settings(max_examples=300, stateful_step_count=100, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])



def test_a_committed_addition_that_stalls_keeps_holding_the_mark() -> None:
    """Found by the model: the leader asks to add 3, the SC commits it, the metadata is slow
    to say so, and 3 stalls. The leader used to drop 3 from its effective set at once and move
    the high watermark past 3's end while the SC had 3 in sync (electable). Now 3 holds the
    mark until the metadata shows it committed, and then leaves the set the usual way."""
    m = PartitionModel()
    m.start()
    m.replicate(1, [2, 3, 2, 3])
    m.tick(LAG_MS + 1)
    m.settle()
    assert m.isr == (1,)
    m.replicate(1, [3, 3])
    m.tick(10)
    assert m.spus[1].request == RequestIsrChange((1, 3), 1, (1,), frozenset({3}))
    m.sc_answers(1, "answered")
    assert m.isr == (1, 3) and m.spus[1].sm.isr == (1,)  # committed; the leader has not seen it
    m.tick(LAG_MS + 1)  # 3 stalls
    assert m.spus[1].sm.effective_isr() == [1, 3]
    m.replicate(2, [])
    m.acknowledged_records_are_on_every_in_sync_member()
    assert len(m.acked) == m.spus[3].durable
    m.sc_answers(1, "answered")  # the re-asked addition: a no-op at the SC
    m.settle()
    m.tick(LAG_MS + 1)  # now committed and stalled: shrunk
    m.settle()
    assert m.isr == (1,)
    m.replicate(2, [])
    assert len(m.acked) > m.spus[3].durable
    m.acknowledged_records_are_on_every_in_sync_member()


def test_a_rebuilt_leader_that_lost_its_unsynced_tail() -> None:
    """The last in-sync member fails its disk and comes back without the tail it had not
    fsynced. The SC keeps it in the set at a new epoch, so a follower that had copied that tail
    truncates it instead of counting as caught up (found by the model; fixed in lose_replica)."""
    m = PartitionModel()
    m.start()
    m.replicate(1, [2, 3, 2, 3])
    m.tick(LAG_MS + 1)
    m.settle()
    assert m.isr == (1,)
    m.append(1, 3)  # not fsynced, yet the followers copy it
    m.follower_fetch(2, 4)
    m.disk_fault(1, 0)
    assert m.isr == (1,) and m.epoch == 2  # the last member is kept, at a new epoch
    m.settle()  # the SPU has the new epoch when it rebuilds (see the closing note of issue 16)
    m.rebuild(1, lose_unsynced=True)
    m.append(1, 5)
    m.fsync(1)
    m.follower_fetch(2, 4)
    m.follower_fetch(2, 4)  # 2 kept the lost tail: it counts as caught up...
    m.tick(10)
    m.settle()  # ...and joins the set
    m.follower_fetch(2, 4)
    m.fsync(1)
    m.acknowledged_records_are_on_every_in_sync_member()


# ---------------------------------------------------------------------- examples


def meta(leader: int | None, epoch: int, isr: tuple[int, ...] = (1, 2, 3), log_end: int = 0, durable: int = 0,
         now: int = 0, replicas: tuple[int, ...] = (1, 2, 3), unclean: int | None = None) -> MetadataChanged:
    return MetadataChanged(leader, epoch, replicas, isr, log_end, durable, now, unclean)


def leader_state(**kw: Any) -> ReplicaState:
    sm = ReplicaState(1, LAG_MS, name="t-0", **kw)
    assert sm.step(meta(1, 5, log_end=10, durable=10)) == [StartLeading(5, 10)]
    return sm


def test_metadata_starts_leading_with_every_progress_unknown() -> None:
    sm = ReplicaState(1, LAG_MS, name="t-0", high_watermark=4, durable=10)
    assert sm.step(meta(1, 5, log_end=12, durable=10, now=7)) == [StartLeading(5, 12)]
    assert sm.leading and sm.epoch_start == 12
    assert sm.progress == {2: FollowerProgress(None, 7), 3: FollowerProgress(None, 7)}
    # The same epoch again: no new start, progress kept.
    sm.progress[2].leo = 10
    assert sm.step(meta(1, 5, log_end=12, durable=10)) == []
    assert sm.progress[2].leo == 10


def test_metadata_starts_and_stops_following() -> None:
    sm = ReplicaState(2, LAG_MS)
    assert sm.step(meta(1, 5)) == [StartFollowing(1, 5)]
    assert sm.step(meta(1, 5)) == []  # the same (leader, epoch): the loop goes on
    assert sm.step(meta(3, 6)) == [StopFollowing(), StartFollowing(3, 6)]
    assert sm.step(meta(None, 7)) == [StopFollowing()]  # offline
    assert sm.step(meta(2, 8, durable=0)) == [StartLeading(8, 0)]


def test_a_shrunk_set_moves_the_mark_on_metadata() -> None:
    sm = leader_state()
    sm.step(FollowerFetched(2, 10, 10, 10, now_ms=1))
    assert sm.high_watermark == 0  # 3 is in the set and has not fetched
    assert sm.step(meta(1, 5, isr=(1, 2), log_end=10, durable=10)) == [AdvanceHighWatermark(10)]


def test_durable_moves_the_mark_up_to_the_slowest_member() -> None:
    sm = leader_state()
    sm.step(FollowerFetched(2, 10, 14, 10, now_ms=1))
    assert sm.step(FollowerFetched(3, 12, 14, 10, now_ms=1)) == [AdvanceHighWatermark(10)]
    assert sm.step(Durable(14)) == []  # 2 holds it at 10
    assert sm.step(FollowerFetched(2, 14, 14, 14, now_ms=2)) == [AdvanceHighWatermark(12)]
    assert sm.step(FollowerFetched(3, 14, 14, 14, now_ms=2)) == [AdvanceHighWatermark(14)]


def test_the_mark_never_moves_back() -> None:
    sm = leader_state(high_watermark=8)
    sm.step(FollowerFetched(2, 5, 10, 10, now_ms=1))
    assert sm.step(FollowerFetched(3, 5, 10, 10, now_ms=1)) == []
    assert sm.high_watermark == 8


def test_follower_calls_are_checked_against_the_epoch() -> None:
    sm = leader_state()
    assert sm.step(FollowerCall(2, 5)) == []
    assert [type(e) for e in sm.step(FollowerCall(9, 5))] == [Refuse]
    assert sm.step(FollowerCall(2, 4))[0].code == "staleEpoch"  # type: ignore[union-attr]
    effects = sm.step(FollowerCall(3, 6))  # a follower knows a newer epoch: we are deposed
    assert effects[0] == Fence("epoch", effects[0].reason)  # type: ignore[union-attr]
    assert effects[1].code == "notLeader"  # type: ignore[union-attr]
    assert sm.fenced and not sm.leading
    assert sm.step(Durable(20)) == [] and sm.step(Tick(10_000)) == []
    assert sm.step(meta(1, 7, log_end=10, durable=10)) == [StartLeading(7, 10)]
    assert not sm.fenced


def test_tick_shrinks_a_stalled_member_and_waits_for_the_answer() -> None:
    sm = leader_state()
    sm.step(FollowerFetched(2, 10, 10, 10, now_ms=1_500))
    sm.step(FollowerFetched(3, 10, 10, 10, now_ms=100))
    [req] = sm.step(Tick(1_500))
    assert req == RequestIsrChange((1, 2), 5, (1, 2, 3), frozenset())
    assert sm.step(Tick(1_600)) == []  # one request in flight
    assert sm.step(IsrChangeAnswered(req, "committed")) == []
    assert sm.isr == (1, 2, 3)  # the committed set comes with the metadata
    sm.step(meta(1, 5, isr=(1, 2), log_end=10, durable=10))
    assert sm.isr == (1, 2) and sm.isr_in_flight is None


def test_tick_grows_a_caught_up_follower_which_counts_at_once() -> None:
    sm = ReplicaState(1, LAG_MS, name="t-0")
    sm.step(meta(1, 5, isr=(1, 2), log_end=10, durable=10))
    sm.step(FollowerFetched(2, 10, 10, 10, now_ms=0))
    assert sm.high_watermark == 10
    sm.step(Durable(20))
    sm.step(FollowerFetched(3, 12, 20, 20, now_ms=0))  # past the mark and the epoch start
    [req] = sm.step(Tick(10))
    assert req == RequestIsrChange((1, 2, 3), 5, (1, 2), frozenset({3}))
    assert sm.effective_isr() == [1, 2, 3]
    assert sm.step(FollowerFetched(2, 20, 20, 20, now_ms=20)) == [AdvanceHighWatermark(12)]  # 3 holds it
    # Refused as computed from a stale set: 3 no longer counts.
    assert sm.step(IsrChangeAnswered(req, "conflict")) == [AdvanceHighWatermark(20)]
    assert sm.effective_isr() == [1, 2]


def test_an_unanswered_addition_keeps_counting_and_is_asked_again() -> None:
    sm = ReplicaState(1, LAG_MS, name="t-0")
    sm.step(meta(1, 5, isr=(1, 2), log_end=10, durable=10))
    sm.step(FollowerFetched(2, 10, 10, 10, now_ms=0))
    sm.step(FollowerFetched(3, 10, 10, 10, now_ms=0))
    [req] = sm.step(Tick(10))
    assert sm.step(IsrChangeAnswered(req, "unknown")) == []
    [again] = sm.step(Tick(20))
    assert again == RequestIsrChange((1, 2, 3), 5, (1, 2), frozenset())  # not new: a conflict keeps it
    assert sm.effective_isr() == [1, 2, 3]


def test_a_stale_answer_fences_the_leader() -> None:
    sm = leader_state()
    sm.step(FollowerFetched(2, 10, 10, 10, now_ms=1_500))
    [req] = sm.step(Tick(1_500))
    effects = sm.step(IsrChangeAnswered(req, "stale"))
    assert [type(e) for e in effects] == [Fence] and sm.fenced


def test_a_disk_fault_fences_for_good() -> None:
    sm = ReplicaState(2, LAG_MS)
    sm.step(meta(1, 5))
    assert sm.step(DiskFault("EIO")) == [Fence("disk", "EIO"), StopFollowing()]
    assert sm.step(DiskFault("again")) == []
    assert sm.step(meta(2, 6)) == []  # no role until rebuilt
    assert not sm.leading and sm.fenced and sm.failure == "EIO"
    assert sm.step(LeaderHighWatermark(10, 10)) == []


def test_a_follower_takes_the_leaders_mark_capped_by_its_log() -> None:
    sm = ReplicaState(2, LAG_MS)
    sm.step(meta(1, 5))
    assert sm.step(LeaderHighWatermark(10, 6)) == [AdvanceHighWatermark(6)]
    assert sm.step(LeaderHighWatermark(4, 8)) == []
    assert sm.step(LeaderHighWatermark(10, 12)) == [AdvanceHighWatermark(10)]


def test_divergence_truncates_but_never_below_the_mark() -> None:
    sm = ReplicaState(2, LAG_MS, high_watermark=6)
    sm.step(meta(1, 5))
    assert sm.step(Diverged(8, 0, 10, 4, 1, 5)) == [Truncate(8, 10, 6)]
    assert sm.step(Diverged(12, 0, 10, 4, 1, 5)) == []  # nothing past the leader's end
    assert sm.step(Diverged(3, 0, 10, 4, 1, 5)) == [RefuseTruncation(1, 5, 10, 3, 6)]
    assert sm.step(LogCut(6, 8)) == [] and sm.durable == 8


def test_an_unclean_election_after_every_batch_allows_the_cut() -> None:
    sm = ReplicaState(2, LAG_MS, high_watermark=6)
    sm.step(meta(1, 5, unclean=5))
    assert sm.step(Diverged(3, 0, 10, 4, 1, 5)) == [Truncate(3, 10, 6)]
    assert sm.step(Diverged(3, 0, 10, 5, 1, 5)) == [RefuseTruncation(1, 5, 10, 3, 6)]


def test_a_leader_log_starting_past_ours_resets_it() -> None:
    sm = ReplicaState(2, LAG_MS)
    sm.step(meta(1, 5))
    assert sm.step(LeaderStartsPast(100, 40)) == [ResetLog(100)]
    assert sm.step(LeaderStartsPast(40, 40)) == []


def test_step_refuses_what_is_not_an_event() -> None:
    with pytest.raises(TypeError):
        ReplicaState(1, LAG_MS).step(object())  # type: ignore[arg-type]
